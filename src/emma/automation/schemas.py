"""Tactic definitions (the YAML format, validated on load) and the API's response shapes.

docs/tactics.md describes the format for authors; keep the two in step.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

_DURATION = re.compile(r"^\s*(?:(\d+)\s*w)?\s*(?:(\d+)\s*d)?\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m)?\s*(?:(\d+)\s*s)?\s*$")
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
OPS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "exists", "missing", "contains")
CHANNELS = ("email", "sms", "push", "webhook", "onsite")
ID_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"


def parse_duration(value: str | int | float) -> dt.timedelta:
    """'90s', '30m', '1h', '3d', '2w', '1d 12h' (or a number of seconds) -> timedelta; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("a duration is a string such as '30m', '1h', '3d' or '2w'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return dt.timedelta(seconds=float(value))
    m = _DURATION.match(str(value))
    if not m or not any(m.groups()):
        raise ValueError(f"{value!r} is not a duration; write e.g. '30m', '1h', '3d', '2w' or '1d 12h'")
    w, d, h, mi, s = (int(g or 0) for g in m.groups())
    return dt.timedelta(weeks=w, days=d, hours=h, minutes=mi, seconds=s)


def parse_clock(value: str) -> dt.time:
    """'09:00' -> time(9, 0); ValueError otherwise."""
    m = _CLOCK.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a time of day; write HH:MM, e.g. '09:00'")
    return dt.time(int(m.group(1)), int(m.group(2)))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _duration(v: Any) -> str:
    parse_duration(v)
    return str(v)


def _clock(v: Any) -> str:
    parse_clock(v)
    return str(v)


DurationStr = Annotated[str, BeforeValidator(_duration)]
ClockStr = Annotated[str, BeforeValidator(_clock)]


class Texts(_Strict):
    de: str
    en: str


# Conditions: a small tree, never a string that gets evaluated.

class Condition(_Strict):
    """One test on a field, or all / any / not of other conditions."""

    all: list[Condition] | None = None
    any: list[Condition] | None = None
    not_: Condition | None = Field(default=None, alias="not")
    field: str | None = None
    op: Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "exists", "missing", "contains"] = "eq"
    value: Any = None
    where: dict[str, Any] | None = None  # events.<name> only: property filter of the counted events
    within: DurationStr | None = None  # events.<name> only: count the events of this recent span
    since_entry: bool = False  # events.<name> only: count the events since the run started

    @model_validator(mode="after")
    def _one_kind(self) -> Condition:
        given = [k for k in ("all", "any", "not_", "field") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a condition has exactly one of: field (with op and value), all, any, not")
        if self.field is not None:
            root = self.field.split(".")[0]
            if root not in FIELD_ROOTS:
                raise ValueError(f"field {self.field!r} must start with one of: {', '.join(FIELD_ROOTS)}")
            if self.op in ("in", "not_in") and not isinstance(self.value, list):
                raise ValueError(f"op {self.op} needs a list as value")
            if (self.where is not None or self.within is not None or self.since_entry) and root != "events":
                raise ValueError(f"where, within and since_entry apply to events.<name> fields only, "
                                 f"not {self.field!r}")
            if root == "events" and not self.field.partition(".")[2]:
                raise ValueError("an events field names the event: events.<Event Name> (the number of them)")
        elif self.where is not None or self.within is not None or self.since_entry:
            raise ValueError("where, within and since_entry belong to an events.<name> field")
        return self


FIELD_ROOTS = ("customer", "prediction", "cart", "consent", "event", "run", "orders", "segment", "events", "order",
               "store", "product", "occasion")


# Entry triggers

class _Entry(_Strict):
    # Checked when the trigger fires: no run starts (and no re-entry cooldown begins) unless it holds.
    when: Condition | None = None


class EventEntry(_Entry):
    kind: Literal["event"]
    event: str | list[str]  # a track event's name (or several); "identify" for identify calls (traits)
    where: dict[str, Any] = {}
    key: str | None = None  # event property that keys the run (cart_id, order_id, sku)
    extend_wait: bool = False  # a repeat of the entry event restarts the running wait-for-event timeout

    @property
    def names(self) -> list[str]:
        return [self.event] if isinstance(self.event, str) else list(self.event)


class SegmentEntry(_Entry):
    kind: Literal["segment_entered", "segment_exited"]
    segment: str


class ScheduleEntry(_Entry):
    kind: Literal["schedule"]
    every: Literal["day", "week", "month"] = "day"
    at: ClockStr = "06:00"  # UTC
    weekday: int | None = Field(default=None, ge=0, le=6)  # 0 = Monday, for every: week
    day: int | None = Field(default=None, ge=1, le=28)  # for every: month
    segment: str | None = None  # a stored segment's key; absent (and no rule): every known customer
    # Or a segment rule written into the tactic (docs/segments.md), so a library tactic needs no stored segment.
    rule: dict[str, Any] | None = None

    @field_validator("rule")
    @classmethod
    def _rule(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            from emma.segments import service as segments
            from emma.segments.exceptions import InvalidRule

            try:
                segments.validate_rule(rule=v)
            except InvalidRule as exc:
                raise ValueError(str(exc)) from None
        return v

    @model_validator(mode="after")
    def _one_audience(self) -> ScheduleEntry:
        if self.segment is not None and self.rule is not None:
            raise ValueError("a schedule reaches a stored segment or the members of its own rule, not both")
        return self


class DateEntry(_Entry):
    kind: Literal["date"]
    attribute: str  # birthday | warranty_end | last_seen_at | created_at | consent.<purpose> | attributes.<name>
    offset_days: int = 0

    @field_validator("attribute")
    @classmethod
    def _attr(cls, v: str) -> str:
        if v not in ("birthday", "warranty_end", "last_seen_at", "created_at") \
                and not v.startswith(("attributes.", "consent.")):
            raise ValueError("attribute is birthday, warranty_end, last_seen_at, created_at, consent.<purpose> "
                             "(when it was recorded) or attributes.<name> (an ISO date)")
        return v


class CatalogEntry(_Entry):
    kind: Literal["catalog"]
    change: Literal["price_drop", "back_in_stock", "new_product", "successor_launched", "upcoming_launch"]
    min_drop_percent: float = Field(default=10.0, gt=0, lt=100)
    min_score: float = Field(default=1.5, gt=0)  # upcoming_launch: the early-adopter score (1 = average) invited
    category: str | None = None  # new_product: category path prefix
    audience: Literal["viewed", "wishlisted", "viewed_or_wishlisted", "bought", "affinity"] = "viewed_or_wishlisted"
    within: DurationStr = "30d"  # how far back a view counts
    max_per_day: int | None = Field(default=None, ge=1)  # entries per customer and day


class StoreEntry(_Entry):
    """A store opening or a scheduled event (emma.stores): customers within radius_km enter lead_days before."""

    kind: Literal["store"]
    change: Literal["opening", "event"]
    lead_days: int = Field(default=14, ge=0, le=365)  # start this many days before (at once if scheduled later)
    radius_km: float | None = Field(default=None, gt=0, le=1000)  # absent: the setting EMMA_STORE_RADIUS_KM


class PredictionEntry(_Entry):
    kind: Literal["prediction"]
    field: str
    op: Literal["gt", "gte", "lt", "lte"] = "gte"
    value: float

    @field_validator("field")
    @classmethod
    def _field(cls, v: str) -> str:
        if v not in PREDICTION_FIELDS:
            raise ValueError(f"unknown prediction {v!r}; one of {', '.join(PREDICTION_FIELDS)}")
        return v


PREDICTION_FIELDS = ("p_alive", "expected_orders", "expected_revenue", "clv", "churn_probability",
                     "propensity_30d", "incentive_uplift", "early_adopter")

class AttributeEntry(_Entry):
    """A profile attribute changes its value (an identify call, an import, or an update_attribute node)."""

    kind: Literal["attribute"]
    attribute: str  # a trait name: loyalty_tier, city, attributes are plain names too
    to: list[Any] | None = None  # only changes to one of these values

    @field_validator("to", mode="before")
    @classmethod
    def _to(cls, v: Any) -> Any:
        return v if v is None or isinstance(v, list) else [v]


Entry = Annotated[EventEntry | SegmentEntry | ScheduleEntry | DateEntry | CatalogEntry | StoreEntry | PredictionEntry
                  | AttributeEntry, Field(discriminator="kind")]


# Nodes

class _Node(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    note: str | None = None

    def targets(self) -> list[str]:
        return [t for t in (getattr(self, "next", None),) if t]


class WaitNode(_Node):
    kind: Literal["wait"]
    duration: str | None = None
    until_local: str | None = None  # HH:MM in the customer's time zone
    until_send_hour: bool = False  # the customer's predicted best send hour
    fallback_hour: int = Field(default=10, ge=0, le=23)
    until_entry: str | None = None  # an entry property holding an ISO date or date-time (an event's start)
    before: DurationStr | None = None  # with until_entry: this long before that moment
    # A date read from a field (prediction.next_order_date, order.runout_date, event.<prop>, customer.<date>),
    # moved by offset ('-3d'), at local time at; without a date the wait lasts fallback. A list of occasions
    # waits for the earliest of them that is still ahead (and, with within, no further ahead than that).
    until_date: str | list[Occasion] | None = None
    offset: str = "0d"
    at: ClockStr = "10:00"
    fallback: DurationStr | None = None
    within: DurationStr | None = None
    next: str

    @model_validator(mode="after")
    def _one(self) -> WaitNode:
        given = [k for k in ("duration", "until_local", "until_entry", "until_date") if getattr(self, k)] + (
            ["until_send_hour"] if self.until_send_hour else [])
        if len(given) != 1:
            raise ValueError("a wait has exactly one of: duration, until_local, until_send_hour, until_entry, "
                             "until_date")
        if self.before and not self.until_entry:
            raise ValueError("before goes with until_entry")
        if self.duration:
            _duration(self.duration)
        if self.until_local:
            _clock(self.until_local)
        if self.until_date:
            for o in self.occasions():
                if o.field.split(".")[0] not in FIELD_ROOTS:
                    raise ValueError(f"until_date {o.field!r} must be a field starting with one of: "
                                     f"{', '.join(FIELD_ROOTS)}")
                parse_offset(o.offset or "0d")
            if not self.fallback:
                raise ValueError("until_date needs a fallback duration for customers without that date, e.g. '30d'")
            parse_offset(self.offset)
        if self.within and not isinstance(self.until_date, list):
            raise ValueError("within goes with a list of occasions in until_date")
        return self

    def occasions(self) -> list[Occasion]:
        """until_date as a list of occasions (a single field is one occasion with the node's offset)."""
        if self.until_date is None:
            return []
        if isinstance(self.until_date, str):
            return [Occasion(field=self.until_date, offset=self.offset)]
        return [o if o.offset is not None else o.model_copy(update={"offset": self.offset}) for o in self.until_date]


class Occasion(_Strict):
    """One date a wait may end on: a field holding a date, moved by offset (default: the wait's offset)."""

    field: str
    offset: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _short(cls, v: Any) -> Any:
        return {"field": v} if isinstance(v, str) else v


def parse_offset(value: str) -> dt.timedelta:
    """'-3d', '+12h', '2d' -> a signed timedelta."""
    text = str(value).strip()
    sign = -1 if text.startswith("-") else 1
    return sign * parse_duration(text.lstrip("+-") or "0s")


class WaitUntilNode(_Node):
    """Waits until a condition holds (checked every check_every), or the timeout passes."""

    kind: Literal["wait_until"]
    when: Condition
    check_every: DurationStr = "1h"
    timeout: DurationStr
    on_true: str
    on_timeout: str

    def targets(self) -> list[str]:
        return [self.on_true, self.on_timeout]


class DoubleOptInNode(_Node):
    """Starts the consent double opt-in (consent pending, transactional confirmation mail) unless granted."""

    kind: Literal["double_opt_in"]
    purpose: str = "email_marketing"
    next: str | None = None


class BanditVariant(_Strict):
    name: str = Field(pattern=ID_PATTERN)
    next: str


class BanditNode(_Node):
    """Chooses a variant by Thompson sampling on each variant's goal conversions so far (learns as runs end)."""

    kind: Literal["bandit"]
    variants: list[BanditVariant] = Field(min_length=2)

    @model_validator(mode="after")
    def _names(self) -> BanditNode:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError("bandit variant names must be unique")
        return self

    def targets(self) -> list[str]:
        return [v.next for v in self.variants]


class WaitForEventNode(_Node):
    kind: Literal["wait_for_event"]
    events: list[str] = Field(min_length=1)
    match: dict[str, Any] = {}  # property -> value; "$key" is the run's key, "$entry.<prop>" the entry event's
    timeout: DurationStr
    on_event: str
    on_timeout: str

    def targets(self) -> list[str]:
        return [self.on_event, self.on_timeout]


class Case(_Strict):
    when: Condition
    next: str


class BranchNode(_Node):
    kind: Literal["branch"]
    cases: list[Case] = Field(min_length=1)
    default: str

    def targets(self) -> list[str]:
        return [c.next for c in self.cases] + [self.default]


class ConditionNode(_Node):
    kind: Literal["condition"]
    when: Condition
    then: str
    else_: str = Field(alias="else")

    def targets(self) -> list[str]:
        return [self.then, self.else_]


class SplitBranch(_Strict):
    name: str
    weight: float = Field(gt=0)
    next: str


class SplitNode(_Node):
    kind: Literal["split"]
    branches: list[SplitBranch] = Field(min_length=2)

    def targets(self) -> list[str]:
        return [b.next for b in self.branches]


class HoldoutNode(_Node):
    kind: Literal["holdout"]
    share: float = Field(gt=0, lt=1)
    control: str
    treatment: str

    def targets(self) -> list[str]:
        return [self.control, self.treatment]


class MessageNode(_Node):
    kind: Literal["message"]
    content: str  # key into the tactic's content
    transactional: bool = False
    purpose: str | None = None  # consent purpose; default: the channel's marketing purpose
    payload: dict[str, Any] = {}  # template data: coupon: {campaign, value, valid_days}, offer, ...
    next: str | None = None


class UpdateAttributeNode(_Node):
    kind: Literal["update_attribute"]
    attribute: str
    value: Any
    next: str | None = None


class AddPointsNode(_Node):
    kind: Literal["add_points"]
    points: int
    per: str | None = None  # a reference ('$entry.revenue'): points per whole unit of it
    attribute: str = "points"
    next: str | None = None


class WebhookNode(_Node):
    kind: Literal["webhook"]
    event: str  # what the receiving system is told happened, e.g. "vip.detected"
    data: dict[str, Any] = {}
    next: str | None = None


class TaskNode(_Node):
    kind: Literal["task"]
    title: str
    detail: str | None = None
    due_in: DurationStr = "2d"
    next: str | None = None


class GoalNode(_Node):
    kind: Literal["goal"]
    next: str | None = None  # where to go when the goal was not reached (absent: the run ends)


class ExitNode(_Node):
    kind: Literal["exit"]
    reason: str = "flow finished"


Node = Annotated[WaitNode | WaitForEventNode | BranchNode | ConditionNode | SplitNode | HoldoutNode | MessageNode
                 | UpdateAttributeNode | AddPointsNode | WebhookNode | TaskNode | GoalNode | ExitNode
                 | WaitUntilNode | DoubleOptInNode | BanditNode, Field(discriminator="kind")]
# Payload references that fill in products to sell: advertising, so never in a transactional message.
AD_REFERENCES = ("$viewed", "$alternatives", "$complements", "$next_best_offer", "$recommendations")
ACTION_KINDS = ("message", "update_attribute", "add_points", "webhook", "task")


class Goal(_Strict):
    event: str
    where: dict[str, Any] = {}  # "$key" is the run's key
    within: DurationStr = "7d"


class ReEntry(_Strict):
    policy: Literal["always", "once", "cooldown"] = "always"
    cooldown: str | None = None

    @model_validator(mode="after")
    def _cooldown(self) -> ReEntry:
        if self.policy == "cooldown":
            if not self.cooldown:
                raise ValueError("policy cooldown needs a cooldown duration, e.g. '30d'")
            _duration(self.cooldown)
        return self


class Content(_Strict):
    channel: Literal["email", "sms", "push", "webhook", "onsite"]
    template: str
    locales: list[Literal["de", "en"]] = ["de", "en"]


# The scenario a tactic carries: a synthetic customer and a timeline on the virtual clock.

class ScenarioCustomer(_Strict):
    external_id: str = "test-customer"
    email: str | None = "test@example.com"
    phone: str | None = None
    first_name: str | None = "Erika"
    last_name: str | None = "Mustermann"
    locale: str | None = "de"
    timezone: str | None = "Europe/Berlin"
    birthday: dt.date | None = None
    postal_code: str | None = None
    city: str | None = None
    country: str | None = None
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    attributes: dict[str, Any] = {}
    consent: dict[str, Literal["granted", "revoked", "pending"]] = {"email_marketing": "granted"}
    consent_recorded: dict[str, dt.date] = {}  # purpose -> when that consent was given (default: the start)
    prediction: dict[str, Any] | None = None


class ScenarioStep(_Strict):
    at: DurationStr  # offset from the scenario start: '0m', '1h 30m', '3d'
    track: dict[str, Any] | None = None  # {event, properties[, timestamp]}; a timestamp in the past backdates it
    identify: dict[str, Any] | None = None  # traits
    catalog: list[dict[str, Any]] | None = None  # product rows (sku, price, stock, ...)
    consent: dict[str, Literal["granted", "revoked", "pending"]] | None = None
    prediction: dict[str, Any] | None = None
    stores: list[dict[str, Any]] | None = None  # store rows (emma.stores), with their stock
    store_events: list[dict[str, Any]] | None = None  # scheduled events (emma.stores)

    @model_validator(mode="after")
    def _one(self) -> ScenarioStep:
        kinds = ("track", "identify", "catalog", "consent", "prediction", "stores", "store_events")
        given = [k for k in kinds if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a timeline step has exactly one of: {', '.join(kinds)}")
        if self.track is not None and not isinstance(self.track.get("event"), str):
            raise ValueError("track needs an event name")
        return self


class ExpectedMessage(_Strict):
    channel: str
    template: str
    at: DurationStr | None = None  # offset from the start when it is due to go out
    transactional: bool | None = None


class Expectations(_Strict):
    messages: list[ExpectedMessage] = []  # exactly these, in due order
    suppressed: list[str] = []  # each text occurs in one suppression reason
    status: str | None = None  # the last run's final status: converted | done | exited | active | waiting
    runs: int | None = None
    holdout: bool | None = None
    journal: list[str] = []  # each text occurs in some step's reason


class Scenario(_Strict):
    start: dt.datetime = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
    customer: ScenarioCustomer = ScenarioCustomer()
    group: Literal["treatment", "control"] = "treatment"  # the test customer's holdout group
    catalog: list[dict[str, Any]] = []
    stores: list[dict[str, Any]] = []  # stores present from the start (emma.stores rows)
    timeline: list[ScenarioStep] = []
    run_for: DurationStr = "30d"  # how long the clock runs after the last step
    expect: Expectations

    @field_validator("start")
    @classmethod
    def _aware(cls, v: dt.datetime) -> dt.datetime:
        return v if v.tzinfo else v.replace(tzinfo=dt.UTC)


class Tactic(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    version: int = Field(ge=1)
    names: Texts
    description: Texts | None = None
    priority: int = Field(default=50, ge=0, le=100)
    channels: list[Literal["email", "sms", "push", "webhook", "onsite"]] = Field(min_length=1)
    enabled_by_default: bool = True
    requires: list[str] = []  # predictions the tactic reads; without them it is not enabled by default
    based_on: str | None = None  # a copy names its original
    entry: Entry
    reentry: ReEntry = ReEntry()
    holdout: float = Field(default=0.1, ge=0, le=0.5)
    goal: Goal | None = None
    content: dict[str, Content] = {}
    start: str | None = None
    nodes: list[Node] = Field(min_length=1)
    scenario: Scenario

    @field_validator("requires")
    @classmethod
    def _requires(cls, v: list[str]) -> list[str]:
        bad = [r for r in v if r not in (*PREDICTION_FIELDS, "recommendations", "best_send_hour", "lifecycle_stage")]
        if bad:
            raise ValueError(f"unknown prediction(s) {', '.join(bad)}")
        return v

    @model_validator(mode="after")
    def _graph(self) -> Tactic:
        ids = [n.id for n in self.nodes]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"node ids must be unique; repeated: {', '.join(dup)}")
        known = set(ids)
        if self.start is None:
            self.start = ids[0]
        elif self.start not in known:
            raise ValueError(f"start: unknown node {self.start!r}")
        for i, n in enumerate(self.nodes):
            if isinstance(n, BanditNode) and self.goal is None:
                raise ValueError(f"nodes.{i} ({n.id}): a bandit learns from the goal; the tactic needs a goal")
            for t in n.targets():
                if t not in known:
                    raise ValueError(f"nodes.{i} ({n.id}): next node {t!r} does not exist")
            if isinstance(n, MessageNode):
                c = self.content.get(n.content)
                if c is None:
                    raise ValueError(f"nodes.{i} ({n.id}): content {n.content!r} is not in the tactic's content")
                if c.channel not in self.channels:
                    raise ValueError(f"nodes.{i} ({n.id}): channel {c.channel} is not in channels")
                if n.transactional and ({"coupon", "offer", "recommendations"} & set(n.payload)
                                        or any(str(v) in AD_REFERENCES for v in n.payload.values())):
                    raise ValueError(f"nodes.{i} ({n.id}): a transactional message carries no coupon, offer or "
                                     "recommendations (no advertising without marketing consent)")
        return self

    def node(self, node_id: str) -> Any:
        """The node with the given id (KeyError when it does not exist)."""
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)


class StepOut(BaseModel):
    at: dt.datetime
    tactic_id: str
    run_id: int
    node_id: str | None
    kind: str
    outcome: str
    reason: str
    inputs: dict[str, Any]


class RunOut(BaseModel):
    id: int
    tactic_id: str
    tactic_version: int
    customer_id: int
    key: str
    status: str
    node_id: str | None
    due_at: dt.datetime | None
    holdout: bool
    entered_at: dt.datetime
    finished_at: dt.datetime | None
    outcome: str | None


class TacticOut(BaseModel):
    id: str
    version: int
    name: str
    enabled: bool
    source: str
    entry: str
    channels: list[str]
    priority: int
    holdout: float
    missing: list[str]
