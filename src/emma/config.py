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
    default_locale: str = "de"

    # Channels. SMTP: security is none | starttls | tls.
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_security: str = "none"
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_timeout: float = 10.0
    mail_from: str = "Tante Emma <shop@example.com>"
    mail_reply_to: str | None = None
    # Webhook channel and the HTTP providers SMS and push are sent through.
    webhook_url: str | None = None
    webhook_secret: str | None = None  # falls back to secret_key
    webhook_timeout: float = 5.0
    sms_provider_url: str | None = None
    sms_provider_token: str | None = None
    push_provider_url: str | None = None
    push_provider_token: str | None = None
    # Messages per minute and channel, e.g. EMMA_CHANNEL_RATE_LIMITS='{"email": 600}'; absent = unlimited.
    channel_rate_limits: dict[str, int] = {}
    delivery_max_attempts: int = 6
    delivery_backoff_seconds: float = 60.0
    delivery_backoff_max_seconds: float = 6 * 3600.0
    delivery_batch_size: int = 100
    delivery_lease_seconds: float = 300.0
    # Last-touch attribution of orders to messages (docs/channels.md): a click counts for this many days, an
    # open or a mere delivery (push, SMS, an email opened with images off) for this many hours.
    attribution_click_days: float = 5.0
    attribution_view_hours: float = 24.0
    # Marketers' own templates; they override the packaged defaults of the same name.
    template_dir: str | None = None
    # Lifetimes of signed links.
    doi_link_ttl_hours: int = 72
    unsubscribe_link_ttl_days: int = 365

    # Browser origins (the shop's pages) allowed to call the API with the JS snippet, e.g.
    # EMMA_CORS_ORIGINS='["https://shop.example.com"]'. Empty: no cross-origin calls.
    cors_origins: list[str] = []
    # On-site decisions (/v1/decide). Catalog-wide data (popularity, co-purchase neighbours, accessories)
    # is cached in the process and rebuilt this often; impressions are written in batches this often.
    onsite_cache_seconds: float = 300.0
    onsite_flush_seconds: float = 0.5
    onsite_items: int = 4
    onsite_popular_days: int = 90
    onsite_copurchase_days: int = 365
    # The exit-intent coupon and the economics that decide whether it pays (see docs/onsite.md).
    onsite_coupon_campaign: str = "exit-intent"
    onsite_coupon_value: str = "10 %"
    onsite_coupon_discount: float = 0.10
    onsite_coupon_margin: float = 0.35
    onsite_coupon_valid_days: int = 7
    # A product page or cart decision waits up to this long for the automation worker to handle the visitor's
    # events of this very page view (a product view, a cart add), so the content an on-site tactic queues for
    # them (in_session_upsell) shows on the same page, not from the next one. 0: never wait.
    onsite_tactic_wait_ms: int = 400

    # Automation. Customers without a time zone are treated as living in default_timezone.
    default_timezone: str = "Europe/Berlin"
    # Marketing messages falling inside the quiet hours (customer's local time) wait until they end; "" = off.
    quiet_hours: str = "22:00-08:00"
    # Marketing messages per customer, channel and window (hour | day | week | month); transactional are exempt.
    frequency_caps: dict[str, dict[str, int]] = {"email": {"day": 1, "week": 3}, "sms": {"day": 1, "week": 2},
                                                 "push": {"day": 2, "week": 7}}
    # `emma serve` runs the worker in a background thread unless this is off.
    worker_embedded: bool = True
    # An idle worker looks for work (one read that locks nothing) after worker_poll_seconds, then less and less
    # often (doubling) up to worker_idle_seconds. New events wake it at once when committed in the same process
    # or, on PostgreSQL, by any process (NOTIFY). SQLite cannot notify other processes: there an idle worker
    # looks at least every worker_probe_seconds.
    worker_poll_seconds: float = 0.01
    worker_idle_seconds: float = 2.0
    worker_probe_seconds: float = 0.1
    worker_batch_size: int = 500
    # PostgreSQL may commit event ids out of order: a gap in events.id is waited for this long before skipping it.
    event_gap_grace_seconds: float = 2.0
    # Events older than this start no run (a worker catching up on history, e.g. the demo shop's year);
    # they still end runs on their goal and wake waiting runs.
    entry_max_event_age_hours: float = 24.0
    # Stores (emma.stores): "nearby" is within this many km of the customer's address coordinates; customers
    # without coordinates count as nearby when their postal code shares this many leading characters.
    store_radius_km: float = 25.0
    store_postal_prefix: int = 2


@lru_cache
def get_settings() -> Settings:
    """Return the process-wide settings (read once)."""
    return Settings()
