"""Settings, read from the environment (EMMA_ prefix) and an optional .env file."""

from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMMA_", env_file=".env", extra="ignore")

    database_url: str = "sqlite:///./emma.db"
    secret_key: str = "change-me-in-production"
    # Segment documents these limits for its HTTP Tracking API.
    max_message_bytes: int = 32 * 1024
    max_batch_bytes: int = 500 * 1024
    # Events stamped further ahead than this are rejected (clock skew allowance).
    max_future_skew_seconds: int = 24 * 3600
    base_url: str = "http://127.0.0.1:8000"
    echo_sql: bool = False


@lru_cache
def get_settings() -> Settings:
    """Return the process-wide settings (read once)."""
    return Settings()
