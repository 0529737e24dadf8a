"""The one settings object: environment `HERALD_*`, the same names as CLI flags and Helm values."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from jwt import PyJWTError
from jwt.algorithms import get_default_algorithms
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.storage.redis_url import RedisTarget

MIN_HS256_KEY_BYTES = 32
"""RFC 7518 section 3.2: an HS256 key at least as long as the hash."""


class Settings(BaseSettings):
    """Every knob Herald has, with its default.

    >>> Settings(heartbeat_seconds=5).heartbeat_seconds
    5.0
    """

    model_config = SettingsConfigDict(env_prefix="HERALD_", extra="ignore")

    redis_url: str | None = Field(
        default=None,
        description="Redis URL: redis:// or rediss:// (one server), redis+sentinel:// or "
        "redis+cluster:// (docs: Redis deployments). Unset: in-process fakeredis, one process.",
    )
    host: str = Field(default="127.0.0.1", description="Address `herald serve` listens on.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port `herald serve` listens on.")
    workers: int = Field(
        default=1,
        ge=1,
        description="Processes serving the port, each a whole Herald with its own hub (about "
        "one per core); more than 1 needs HERALD_REDIS_URL.",
    )
    log_level: str = Field(default="info", description="Log level: debug, info, warning, error.")
    access_log: bool = Field(
        default=False,
        description="A log line per request (uvicorn's access log). Off: it costs a "
        "publish about a third more CPU (docs: Performance).",
    )
    shutdown_timeout_seconds: float = Field(
        default=10.0, gt=0, description="On SIGTERM, the most time given to streams to end."
    )

    jwt_key: SecretStr | None = Field(
        default=None,
        description="Turns JWT auth on: the HS256 shared secret (at least 32 bytes), or the "
        "PEM public key for RS256/ES256. Unset: anyone may publish and subscribe "
        "(development only).",
    )
    jwt_algorithm: Literal["HS256", "RS256", "ES256"] = Field(
        default="HS256", description="The one algorithm tokens must be signed with."
    )
    jwt_cookie: str = Field(
        default="herald_token", description="Cookie that may carry a subscriber's token."
    )

    metrics_token: SecretStr | None = Field(
        default=None,
        description="Bearer token GET /metrics requires (Prometheus: authorization "
        "credentials). Unset: /metrics answers anyone who reaches it.",
    )
    api_docs: bool = Field(
        default=True,
        description="Serve the interactive API docs (/docs, /redoc) and the OpenAPI schema "
        "(/openapi.json); false hides them in production.",
    )

    cors_origins: list[str] = Field(
        default=[],
        description='Origins browsers may call Herald from, as JSON: ["https://app.example"]; '
        '["*"] for any (then without credentials). Empty: no CORS headers.',
    )

    retention: int = Field(
        default=10_000, ge=1, description="Entries kept per topic stream (approximate MAXLEN)."
    )
    publish_replicas: int = Field(
        default=0,
        ge=0,
        description="Acknowledge a publish only once this many replicas have it (Redis WAIT); "
        "0: once the primary has it.",
    )
    publish_replicas_timeout_ms: int = Field(
        default=1000,
        ge=1,
        description="How long a publish waits for HERALD_PUBLISH_REPLICAS replicas; fewer in "
        "time: 503, the events stored on the primary (retry with the same Idempotency-Key).",
    )
    max_event_bytes: int = Field(
        default=64 * 1024, ge=1, description="Largest event data accepted, in bytes (else 413)."
    )
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1, description="Largest /publish request body, in bytes (else 413)."
    )
    max_header_bytes: int = Field(
        default=16 * 1024, ge=1024, description="Largest request headers, in bytes (else 431)."
    )
    max_batch: int = Field(default=1000, ge=1, description="Most events in one batch (else 413).")
    max_topics: int = Field(
        default=32, ge=1, description="Most topics in one subscription (else 400)."
    )
    publish_rate: float = Field(
        default=0,
        ge=0,
        description="Events a second one client may publish on average (else 429); "
        "0: no limit. A client is its token's `sub`, or its address without auth.",
    )
    publish_burst: int = Field(
        default=1000, ge=1, description="Events one client may publish at once."
    )
    topic_ttl: int = Field(
        default=86_400,
        ge=0,
        description="Seconds a topic lives after its last append: then its stream and "
        "history go (within 1%, at most a minute, later). 0: topics never expire.",
    )
    idempotency_seconds: int = Field(
        default=86_400,
        ge=1,
        description="How long a publish's Idempotency-Key is remembered.",
    )
    max_streams: int = Field(
        default=10_000,
        ge=1,
        description="Most open streams per process (else 503 with Retry-After).",
    )

    mercure_anonymous: bool = Field(
        default=False,
        description="Mercure (/.well-known/mercure): let subscribers without a token in; "
        "they receive public updates only.",
    )
    mercure_audience: str | None = Field(
        default=None,
        description="Mercure: the `aud` every Mercure token must name, as a resource "
        "identifier such as https://hub.example.com/.well-known/mercure. Unset: not checked.",
    )
    mercure_issuer: str | None = Field(
        default=None,
        description="Mercure: the `iss` every Mercure token must carry. Unset: not checked.",
    )
    mercure_url: str | None = Field(
        default=None,
        description="Mercure: the hub's public URL (https://hub.example.com/.well-known/"
        "mercure), the base of relative URL patterns and topics and the target of Link "
        "headers. Unset: Link targets follow each request's host.",
    )
    mercure_subscriptions: bool = Field(
        default=False,
        description="Mercure: active subscriptions, announced as private `mercure` events "
        "and listed at /.well-known/mercure/subscriptions (two Redis writes a connection).",
    )
    mercure_retention: int = Field(
        default=100_000,
        ge=1,
        description="Mercure: updates kept for reconnecting subscribers, all topics together "
        "(approximate MAXLEN of the one Mercure stream).",
    )

    heartbeat_seconds: float = Field(
        default=15.0, gt=0, description="Idle time after which a stream gets a comment line."
    )
    retry_ms: int = Field(
        default=2000, ge=0, description="The `retry:` reconnection delay sent to clients."
    )
    subscriber_buffer: int = Field(
        default=4096,
        ge=1,
        description="Events a subscriber may have waiting; beyond it, it is disconnected.",
    )
    send_timeout_seconds: float = Field(
        default=30.0, gt=0, description="A write stuck this long closes the connection."
    )
    header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="A connection whose request headers are not complete this long after it "
        "opened (or after its previous response, on a kept-alive connection) is closed.",
    )
    replay_page: int = Field(
        default=500, ge=1, description="Entries per XRANGE page when replaying after a resume."
    )
    read_count: int = Field(
        default=1000, ge=1, description="Most entries per topic one hub XREAD returns."
    )
    change_feed: Literal["auto", "notifications", "off"] = Field(
        default="auto",
        description="How the hub learns which topics got entries. notifications: Redis "
        "keyspace notifications (enabled with CONFIG SET, added to the flags set; where "
        "CONFIG is refused the server is trusted to have them), and the hub reads only those "
        "topics; off: XREAD BLOCK over every followed topic; auto: notifications where CONFIG "
        "SET is allowed, else off.",
    )
    reader_block_ms: int = Field(
        default=5000,
        ge=10,
        description="XREAD BLOCK time of the hub reader; with the change feed, how often "
        "every followed topic is read all the same.",
    )
    reader_coalesce_ms: float = Field(
        default=2.0,
        ge=0,
        description="After a read that returned entries (with the change feed: after any "
        "read), how long the hub reader waits before the next, so that entries arriving "
        "meanwhile come in one read; 0: at once.",
    )
    # Every read sends all its topics' keys and ids, so a smaller chunk lowers latency
    # and a larger one Redis commands per event (measured in docs/performance.md).
    reader_chunk: int = Field(
        default=500, ge=1, description="Most topics one hub reader connection follows."
    )
    redis_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Socket timeout of ordinary (non-blocking) Redis commands."
    )

    demo: bool = Field(
        default=False,
        description="Run the demo producers (stock ticks, a followed log, online counts, "
        "a typewriter) inside the service, for the page at /.",
    )
    demo_page: bool | None = Field(
        default=None,
        description="Serve the demo page at /. Unset: served with --demo or in the embedded "
        "mode (no HERALD_REDIS_URL), not otherwise.",
    )
    presence_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How often a replica refreshes its per-topic subscriber counts in "
        "Redis; they expire after three intervals, so a crashed replica's counts vanish.",
    )

    url: str | None = Field(
        default=None,
        description="Herald's base URL. `herald publish` and `herald tail` talk to it "
        "(default http://127.0.0.1:8000); workers publish over HTTP when it is set, "
        "else straight into Redis.",
    )
    token: SecretStr | None = Field(
        default=None, description="Bearer token the client sends to HERALD_URL (a JWT)."
    )

    stocks_symbols: str = Field(
        default="AAPL=189.50,MSFT=415.20,NVDA=131.40,TSLA=248.90,AMZN=186.10",
        description="Stock ticks worker: SYMBOL=start price, comma separated.",
    )
    stocks_rate: float = Field(
        default=2.0, gt=0, description="Stock ticks worker: ticks a second per symbol."
    )
    stocks_volatility: float = Field(
        default=0.4, ge=0, description="Stock ticks worker: annualised volatility of prices."
    )
    stocks_speed: float = Field(
        default=120.0,
        gt=0,
        description="Stock ticks worker: simulated market seconds per real second.",
    )
    logs_files: str = Field(
        default="",
        description="Log lines worker: NAME=PATH, comma separated; each file's lines go "
        "to topic logs.NAME.",
    )
    logs_poll_seconds: float = Field(
        default=0.25, gt=0, description="Log lines worker: how often a file is checked."
    )
    logs_batch: int = Field(
        default=200, ge=1, description="Log lines worker: most lines in one publish."
    )
    online_interval_seconds: float = Field(
        default=1.0,
        gt=0,
        description="Online counts worker: how often counts are summed; a changed count "
        "is published at most once per interval.",
    )
    typewriter_topic: str = Field(
        default="chat.demo", description="Typewriter worker: the topic answers stream to."
    )
    typewriter_text: str | None = Field(
        default=None,
        description="Typewriter worker: the text to stream; with an upstream, the prompt "
        "sent to it.",
    )
    typewriter_file: str | None = Field(
        default=None,
        description="Typewriter worker: a file of texts separated by blank lines, streamed "
        "in turn (instead of HERALD_TYPEWRITER_TEXT); with an upstream, prompts.",
    )
    typewriter_upstream_url: str | None = Field(
        default=None,
        description="Typewriter worker: base URL of an OpenAI-compatible API, /v1 included "
        "(https://api.openai.com/v1, http://127.0.0.1:11434/v1 for Ollama). Set: each text "
        "is sent to it as a prompt and its streamed answer relayed. Unset: texts typed out.",
    )
    typewriter_model: str | None = Field(
        default=None,
        description="Typewriter worker: the model the upstream answers with (needed with "
        "HERALD_TYPEWRITER_UPSTREAM_URL).",
    )
    typewriter_api_key: SecretStr | None = Field(
        default=None,
        description="Typewriter worker: the upstream's API key, sent as Authorization: Bearer. "
        "Unset: no Authorization header (local servers).",
    )
    typewriter_upstream_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        description="Typewriter worker: longest wait for the upstream to connect, to start "
        "answering, or between two chunks; longer ends the answer with `failed`.",
    )
    typewriter_tokens_per_second: float = Field(
        default=25.0, gt=0, description="Typewriter worker: average pace of tokens."
    )
    typewriter_pause_seconds: float = Field(
        default=4.0,
        ge=0,
        description="Typewriter worker: pause between two answers; the worker loops over "
        "its texts until stopped.",
    )

    @field_validator("redis_url")
    @classmethod
    def _a_redis_deployment_herald_knows(cls, url: str | None) -> str | None:
        if url is not None:
            RedisTarget.parse(url)
        return url

    @model_validator(mode="after")
    def _a_jwt_key_that_can_verify(self) -> Settings:
        if self.jwt_key is None:
            return self
        key = self.jwt_key.get_secret_value()
        if self.jwt_algorithm == "HS256":
            size = len(key.encode())
            if size < MIN_HS256_KEY_BYTES:
                raise ValueError(
                    f"HERALD_JWT_KEY is {size} bytes; an HS256 secret needs at least "
                    f"{MIN_HS256_KEY_BYTES} (RFC 7518 section 3.2). Make one with "
                    "`openssl rand -base64 32`"
                )
            return self
        try:
            get_default_algorithms()[self.jwt_algorithm].prepare_key(key)
        except (PyJWTError, ValueError):
            raise ValueError(
                f"HERALD_JWT_KEY is not a PEM key {self.jwt_algorithm} can verify with "
                "(-----BEGIN PUBLIC KEY----- …)"
            ) from None
        return self

    @field_validator("mercure_url")
    @classmethod
    def _an_absolute_hub_url(cls, url: str | None) -> str | None:
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError("HERALD_MERCURE_URL must be an absolute http(s) URL")
        return url

    @model_validator(mode="after")
    def _a_full_batch_can_pass_the_rate_limit(self) -> Settings:
        if self.publish_rate > 0 and self.publish_burst < self.max_batch:
            raise ValueError("publish_burst must be at least max_batch, or full batches never pass")
        return self
