"""All HDX settings, in one place.

Values come from (highest priority first): keyword arguments, ``HDX_*``
environment variables, an optional ``configs/local.yaml``, ``configs/hdx.yaml``,
and the defaults below. Nested values use ``__`` in environment variables, e.g.
``HDX_ENSEMBLE_WEIGHTS__ADAPTIVE=0.5``.

The embedded defaults need nothing installed: SQLite under ``var/``, an
in-process cache and local directories for the model and index stores.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"
DEFAULT_HOME = PROJECT_ROOT / "var"
DEV_JWT_SECRET = "hdx-dev-secret-change-me-hdx-dev-secret"  # refused unless dev_mode


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="HDX_",
        env_nested_delimiter="__",
        yaml_file=[CONFIG_DIR / "hdx.yaml", CONFIG_DIR / "local.yaml"],
        extra="ignore",
    )

    # --- where things live -------------------------------------------------
    home: Path = Field(DEFAULT_HOME, description="Root for embedded state (SQLite, stores).")
    model_store_uri: str = Field("", description="Model bundle store; default <home>/models.")
    index_store_uri: str = Field("", description="Retrieval index store; default <home>/indexes.")
    uci_data_dir: Path = Field(
        PROJECT_ROOT.parent / "shared" / "data" / "uci_hydraulic",
        description="UCI rig data in its folder format.",
    )
    knowledge_dirs: list[Path] = Field(
        default_factory=lambda: [PROJECT_ROOT / "knowledge" / "docs"],
        description="Folders of maintenance documents indexed for the assistant.",
    )

    # --- features and models ----------------------------------------------
    default_profile: str = Field(
        "uci-1hz",
        description="equipment profile of systems that declare no channels, and of `hdx train` without --profile",
    )
    bootstrap_profiles: list[str] = Field(
        default_factory=lambda: ["uci-1hz", "basic", "full-rig"],
        description="the profiles `hdx bootstrap` trains when the store lacks them",
    )
    max_models_per_replica: int = Field(
        4, ge=1, description="profile versions a model replica keeps loaded (least recently used out first)"
    )
    ensemble_weights: dict[str, float] = Field(
        default_factory=dict,
        description="vote weight by model family, overriding the family's default in diagnosis.registry",
    )
    anomaly_threshold: float = Field(0.5, ge=0.0, le=1.0, description="anomaly_score at or above this flags an anomaly")
    simulator_cycles_per_condition: int = Field(12, ge=1)
    batch_predict_batch_size: int = Field(500, ge=1, description="cycles per model call in batch prediction")
    batch_predict_workers: int = Field(2, ge=1, description="max actors in the batch prediction pool")
    random_seed: int = 0

    # --- state ---------------------------------------------------------------
    database_url: str = Field("", description="SQLAlchemy async URL; default SQLite under <home>.")
    redis_url: str | None = Field(None, description="Redis for cache, rate limits and revocation.")
    cache_max_entries: int = 10_000
    cache_ttl_s: int = 3_600

    # --- auth ------------------------------------------------------------------
    dev_mode: bool = Field(False, description="Allows the built-in development JWT secret.")
    jwt_secret: str = ""
    jwt_algorithm: str = "HS256"
    jwt_issuer: str = "hdx"
    jwt_audience: str = "hdx-api"
    access_token_ttl_s: int = 900
    refresh_token_ttl_s: int = 14 * 24 * 3600
    login_max_failures: int = Field(5, description="failed logins per username within the window before throttling")
    login_failure_window_s: int = 300
    access_cache_ttl_s: float = Field(
        5.0,
        ge=0.0,
        description="how long an ingress replica reuses a caller's user/API-key row and a granted system "
        "access before reading them again (0: every request reads them); changes made through "
        "this replica's API apply at once",
    )

    # --- trust: shared security state (login limits, revocation, key-value breaker) ---
    login_client_max_attempts: int = Field(
        60, ge=1, description="login attempts per client address within login_client_window_s, right or wrong"
    )
    login_client_window_s: int = Field(60, ge=1)
    revocation_sync_s: float = Field(
        1.0, gt=0.0, description="how often an ingress replica re-reads revoked tokens and sessions from the database"
    )
    kv_timeout_s: float = Field(0.5, gt=0.0, description="socket timeout of one Redis call")
    kv_slow_call_s: float = Field(
        0.3,
        gt=0.0,
        description="a Redis call slower than this (event-loop lag included) opens the circuit breaker like a failure",
    )
    kv_breaker_cooldown_s: float = Field(
        5.0, gt=0.0, description="how long Redis is cut off after a failure before one call probes it"
    )
    memory_kv_max_entries: int = Field(100_000, ge=1, description="entries the in-process key-value store keeps")

    # --- serving ------------------------------------------------------------
    max_body_bytes: int = 2_000_000
    max_batch_items: int = 64
    request_timeout_s: float = 10.0
    model_call_timeout_s: float = 10.0
    model_version_refresh_s: float = Field(
        30.0,
        gt=0.0,
        description="how often the ingress re-reads the model versions in service (cache keys); every "
        "ensemble answer also carries them",
    )

    # --- assistant ----------------------------------------------------------
    llm_backend: str = Field("extractive", pattern="^(extractive|ollama|vllm)$")
    llm_model: str = "llama3.2"
    ollama_url: str = "http://127.0.0.1:11434"
    vllm_model_path: str = ""
    llm_timeout_s: float = 30.0
    max_query_chars: int = 2_000
    prompt_template_path: Path = CONFIG_DIR / "prompts" / "maintenance_assistant.txt"

    # --- platform -------------------------------------------------------------
    tiers_path: Path = CONFIG_DIR / "tiers.yaml"
    audit_flush_interval_s: float = 1.0
    adaptive_sync_interval_s: float = 5.0
    max_ingestion_cycles: int = Field(500, ge=1, description="cycles per ingestion request")
    log_json: bool = Field(True, description="structured JSON log lines with the trace id")

    # --- trust: hostile input, audit durability --------------------------------
    audit_spool_dir: Path | None = Field(
        None,
        description="local folder where audit records the database refused wait, so a restart during an "
        "outage loses none; default <home>/spool",
    )

    # --- payload log: a sample of what was served, for retraining and audit -------
    payload_log_uri: str = Field(
        "", description="where the payload log's Parquet partitions go (folder or URI); default <home>/payloads"
    )
    payload_log_sample: float = Field(
        0.1, ge=0.0, le=1.0, description="share of served requests logged (by trace id); 0 turns the log off"
    )
    payload_log_flush_s: float = Field(10.0, gt=0, description="seconds between payload log writes")
    payload_log_max_buffered_mb: float = Field(
        256.0, gt=0, description="MiB of rows waiting to be written before new ones are dropped (and counted)"
    )

    # --- online learning (Adaptive state revisions) -----------------------------
    adaptive_keep_revisions: int = Field(
        10, ge=1, description="learned-state revisions kept per Adaptive bundle; older ones are deleted"
    )

    @model_validator(mode="after")
    def _derive_paths(self) -> Settings:
        self.home = Path(self.home).resolve()
        if not self.model_store_uri:
            self.model_store_uri = str(self.home / "models")
        if not self.index_store_uri:
            self.index_store_uri = str(self.home / "indexes")
        if not self.payload_log_uri:
            self.payload_log_uri = str(self.home / "payloads")
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{self.home / 'hdx.db'}"
        return self

    def effective_jwt_secret(self) -> str:
        """The signing secret, or an error saying why the service must not start."""
        if self.jwt_secret and self.jwt_secret != DEV_JWT_SECRET:
            if len(self.jwt_secret.encode()) < 32:
                raise ValueError("HDX_JWT_SECRET must be at least 32 bytes")
            return self.jwt_secret
        if self.dev_mode:
            return DEV_JWT_SECRET
        raise ValueError(
            "HDX_JWT_SECRET is missing or is the development default; set a secret of at least "
            "32 bytes, or HDX_DEV_MODE=true for local development"
        )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls), file_secret_settings)


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (read once; tests build their own ``Settings``)."""
    return Settings()
