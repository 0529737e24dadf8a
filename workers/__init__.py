"""Producer workers that publish into Herald (stock ticks, log lines, online counts, demos)."""
