"""Simulated customers and their hidden traits: the ground truth the models should recover."""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from emma.demo.catalog import CATEGORIES

# Incentive response types (the uplift ground truth).
SURE_THING, PERSUADABLE, LOST_CAUSE, SLEEPING_DOG = 0, 1, 2, 3
INCENTIVE_TYPES = ("sure_thing", "persuadable", "lost_cause", "sleeping_dog")
INCENTIVE_SHARES = (0.30, 0.25, 0.40, 0.05)
CHANNELS = ("email", "push", "sms", "onsite")
CHANNEL_SHARES = (0.55, 0.2, 0.1, 0.15)
CONSENT_PURPOSES = ("email_marketing", "sms_marketing", "push", "personalization", "ads", "analytics")
# Phone numbers: the Bundesnetzagentur keeps these five blocks of 1,000 numbers unassigned for films, books and
# teaching material ("Drama Numbers", Amtsblatt 7/2021, Mitteilung 148/2021), so no real person gets the demo's
# SMS. Its reserved mobile numbers are too few for a shop; 5,000 numbers are enough for the default demo.
DRAMA_NUMBERS = ("+493023125", "+496990009", "+494066969", "+492214710", "+498999998")
PHONE_SHARE = 0.25  # of the customers without SMS consent who still give a number (push-only, service)

# (city, postal code, lat, lon, weight, country, time zone)
CITIES: tuple[tuple[str, str, float, float, float, str, str], ...] = (
    ("Berlin", "10115", 52.520, 13.405, 3.6, "DE", "Europe/Berlin"),
    ("Hamburg", "20095", 53.551, 9.994, 1.8, "DE", "Europe/Berlin"),
    ("München", "80331", 48.137, 11.576, 1.5, "DE", "Europe/Berlin"),
    ("Köln", "50667", 50.938, 6.960, 1.1, "DE", "Europe/Berlin"),
    ("Frankfurt am Main", "60311", 50.110, 8.682, 0.75, "DE", "Europe/Berlin"),
    ("Stuttgart", "70173", 48.776, 9.183, 0.63, "DE", "Europe/Berlin"),
    ("Düsseldorf", "40213", 51.227, 6.774, 0.62, "DE", "Europe/Berlin"),
    ("Leipzig", "04109", 51.340, 12.375, 0.6, "DE", "Europe/Berlin"),
    ("Dortmund", "44135", 51.514, 7.468, 0.59, "DE", "Europe/Berlin"),
    ("Essen", "45127", 51.456, 7.012, 0.58, "DE", "Europe/Berlin"),
    ("Bremen", "28195", 53.079, 8.802, 0.57, "DE", "Europe/Berlin"),
    ("Dresden", "01067", 51.050, 13.738, 0.56, "DE", "Europe/Berlin"),
    ("Hannover", "30159", 52.376, 9.732, 0.54, "DE", "Europe/Berlin"),
    ("Nürnberg", "90403", 49.452, 11.077, 0.52, "DE", "Europe/Berlin"),
    ("Bochum", "44787", 51.482, 7.216, 0.36, "DE", "Europe/Berlin"),
    ("Bonn", "53111", 50.737, 7.098, 0.33, "DE", "Europe/Berlin"),
    ("Münster", "48143", 51.961, 7.626, 0.32, "DE", "Europe/Berlin"),
    ("Karlsruhe", "76133", 49.007, 8.404, 0.31, "DE", "Europe/Berlin"),
    ("Mannheim", "68159", 49.488, 8.466, 0.31, "DE", "Europe/Berlin"),
    ("Augsburg", "86150", 48.371, 10.898, 0.3, "DE", "Europe/Berlin"),
    ("Freiburg im Breisgau", "79098", 47.999, 7.842, 0.23, "DE", "Europe/Berlin"),
    ("Kiel", "24103", 54.323, 10.123, 0.25, "DE", "Europe/Berlin"),
    ("Rostock", "18055", 54.092, 12.099, 0.21, "DE", "Europe/Berlin"),
    ("Potsdam", "14467", 52.391, 13.064, 0.18, "DE", "Europe/Berlin"),
    ("Regensburg", "93047", 49.013, 12.101, 0.15, "DE", "Europe/Berlin"),
    ("Wien", "1010", 48.208, 16.373, 0.9, "AT", "Europe/Vienna"),
    ("Graz", "8010", 47.071, 15.439, 0.2, "AT", "Europe/Vienna"),
    ("Zürich", "8001", 47.377, 8.541, 0.45, "CH", "Europe/Zurich"),
    ("Basel", "4051", 47.560, 7.589, 0.15, "CH", "Europe/Zurich"),
    ("London", "EC1A", 51.507, -0.128, 0.2, "GB", "Europe/London"),
    ("Amsterdam", "1011", 52.370, 4.895, 0.12, "NL", "Europe/Amsterdam"),
    ("New York", "10001", 40.713, -74.006, 0.06, "US", "America/New_York"),
)
TIMEZONES = tuple(sorted({c[6] for c in CITIES}))

FIRST_NAMES = ("Anna", "Lena", "Marie", "Sophie", "Laura", "Julia", "Lea", "Hannah", "Emma", "Mia", "Sarah",
               "Katharina", "Ursula", "Monika", "Petra", "Sabine", "Gabriele", "Claudia", "Ingrid", "Helga", "Lukas",
               "Leon",
               "Jonas", "Paul", "Felix", "Maximilian", "Tim", "Jan", "Niklas", "Tobias", "Thomas", "Michael",
               "Andreas", "Stefan", "Peter", "Klaus", "Jürgen", "Wolfgang", "Frank", "Markus", "Ali", "Elif",
               "Mehmet", "Olga", "Piotr", "Giulia", "James", "Emily")
LAST_NAMES = ("Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Schulz", "Hoffmann",
              "Schäfer", "Koch", "Bauer", "Richter", "Klein", "Wolf", "Schröder", "Neumann", "Schwarz", "Zimmermann",
              "Braun", "Krüger", "Hofmann", "Hartmann", "Lange", "Schmitt", "Werner", "Krause", "Meier", "Lehmann",
              "Yılmaz", "Kaya", "Nowak", "Rossi", "Smith", "Huber", "Gruber", "Keller")


@dataclass
class Population:
    """Customers as parallel arrays (index = simulated customer number)."""

    seed: int
    user_id: list[str]
    anonymous_id: list[str]
    second_device_id: list[str]
    join_day: np.ndarray  # first visit
    purchase_rate: np.ndarray  # purchases per day while alive (gamma distributed)
    dropout_p: np.ndarray  # probability of leaving after each purchase (beta distributed)
    browse_rate: np.ndarray  # extra browsing sessions per day while alive
    affinity: np.ndarray  # (n, categories), rows sum to 1
    cares_sustainability: np.ndarray
    price_sensitivity: np.ndarray  # 0 (indifferent) .. 1 (buys the cheapest)
    incentive_type: np.ndarray
    preferred_channel: np.ndarray
    preferred_hour: np.ndarray  # local hour of day
    birthday: np.ndarray  # datetime64[D]
    locale: np.ndarray  # 0: de, 1: en
    city: np.ndarray  # index into CITIES
    lat: np.ndarray
    lon: np.ndarray
    first_name: np.ndarray
    last_name: np.ndarray
    consent: np.ndarray  # (n, purposes) bool, given at registration
    revoke_after_days: np.ndarray  # email consent revoked this many days after registration; -1 never
    lead_signup_p: np.ndarray  # chance to register (newsletter) in a browsing session without buying
    second_device_day: np.ndarray  # -1: single device

    def __len__(self) -> int:
        return len(self.user_id)

    def email(self, i: int) -> str:
        first = _ascii(FIRST_NAMES[self.first_name[i]])
        last = _ascii(LAST_NAMES[self.last_name[i]])
        domain = ("example.com", "example.org", "example.net")[i % 3]
        return f"{first}.{last}.{i + 1}@{domain}"

    @functools.cached_property
    def _phone_rank(self) -> np.ndarray:
        # Everyone who agreed to SMS, and a quarter of the rest (reproducibly), in customer order; -1: no number.
        n = len(self.user_id)
        spread = (np.arange(n, dtype=np.int64) * 2654435761 % 1000) < PHONE_SHARE * 1000
        has = self.consent[:, CONSENT_PURPOSES.index("sms_marketing")] | spread
        rank = np.cumsum(has) - 1
        return np.where(has & (rank < 1000 * len(DRAMA_NUMBERS)), rank, -1)

    def phone(self, i: int) -> str | None:
        """The customer's mobile number (E.164, from the reserved fiction blocks), or None."""
        k = int(self._phone_rank[i])
        return None if k < 0 else f"{DRAMA_NUMBERS[k // 1000]}{k % 1000:03d}"

    def timezone(self, i: int) -> str:
        return CITIES[self.city[i]][6]

    def locale_tag(self, i: int) -> str:
        return ("de-DE", "en-GB")[int(self.locale[i])] if CITIES[self.city[i]][5] == "DE" else (
            "de-" + CITIES[self.city[i]][5] if self.locale[i] == 0 else "en-GB")

    def traits(self, i: int) -> dict[str, Any]:
        """What the customer tells the shop when registering (identify traits)."""
        city = CITIES[self.city[i]]
        traits = {"email": self.email(i), "firstName": FIRST_NAMES[self.first_name[i]],
                  "lastName": LAST_NAMES[self.last_name[i]], "birthday": str(self.birthday[i]),
                  "locale": self.locale_tag(i), "timezone": city[6],
                  "address": {"city": city[0], "postalCode": city[1], "country": city[5],
                              "lat": round(float(self.lat[i]), 4), "lon": round(float(self.lon[i]), 4)}}
        phone = self.phone(i)
        if phone:
            traits["phone"] = phone
        return traits

    def consent_preferences(self, i: int) -> dict[str, bool]:
        return {p: bool(self.consent[i, k]) for k, p in enumerate(CONSENT_PURPOSES)}

    def top_category(self) -> np.ndarray:
        return np.argmax(self.affinity, axis=1)


_UMLAUT = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "ı": "i", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue"})


def _ascii(s: str) -> str:
    return s.translate(_UMLAUT).lower()


def _hex_ids(rng: np.random.Generator, n: int) -> list[str]:
    # UUID-shaped anonymous ids, like analytics.js sets them, but reproducible from the seed.
    a = rng.integers(0, 2**63, size=n, dtype=np.int64)
    b = rng.integers(0, 2**63, size=n, dtype=np.int64)
    out = []
    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        h = f"{x:016x}{y:016x}"
        out.append(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}")
    return out


def generate_population(rng: np.random.Generator, *, n: int, days: int, seed: int,
                        end: dt.date) -> Population:
    """Draw n customers; BG/NBD-type heterogeneity: gamma purchase rates, beta dropout."""
    k = len(CATEGORIES)
    # Most customers existed before the window starts (joined in the first weeks), the rest trickle in.
    early = rng.random(n) < 0.45
    join_day = np.where(early, rng.integers(0, max(1, days // 12), size=n),
                        rng.integers(0, max(1, int(days * 0.95)), size=n))
    # Gamma(r, alpha): mean ~ 3.3 purchases a year for the alive, strongly over-dispersed.
    purchase_rate = rng.gamma(shape=0.6, scale=(3.3 / 365) / 0.6, size=n)
    dropout_p = rng.beta(1.0, 3.0, size=n)
    browse_rate = 1.5 * purchase_rate + rng.gamma(1.0, 0.004, size=n)
    # Concentrated Dirichlet: most customers have one or two categories they care about.
    affinity = rng.dirichlet(np.full(k, 0.35), size=n)
    cares = rng.random(n) < 0.3
    price_sens = rng.beta(2.0, 2.5, size=n)
    incentive = rng.choice(len(INCENTIVE_TYPES), size=n, p=INCENTIVE_SHARES)
    channel = rng.choice(len(CHANNELS), size=n, p=CHANNEL_SHARES)
    hour = np.clip(np.round(rng.choice([8, 12, 19, 21], size=n, p=[0.2, 0.2, 0.35, 0.25])
                            + rng.normal(0, 1.2, size=n)), 6, 23).astype(np.int64)
    weights = np.array([c[4] for c in CITIES])
    city = rng.choice(len(CITIES), size=n, p=weights / weights.sum())
    lat = np.array([c[2] for c in CITIES])[city] + rng.normal(0, 0.05, size=n)
    lon = np.array([c[3] for c in CITIES])[city] + rng.normal(0, 0.07, size=n)
    german = np.array([c[5] in ("DE", "AT", "CH") for c in CITIES])[city]
    locale = np.where(german, rng.random(n) < 0.06, rng.random(n) < 0.85).astype(np.int64)
    born = np.datetime64(end, "D") - rng.integers(18 * 365, 80 * 365, size=n).astype("timedelta64[D]")
    # Consent: 15 % agree to nothing, the rest decide per purpose.
    none = rng.random(n) < 0.15
    shares = np.array([0.62, 0.12, 0.28, 0.7, 0.35, 0.75])
    consent = (rng.random((n, len(CONSENT_PURPOSES))) < shares) & ~none[:, None]
    revoke = np.where(consent[:, 0] & (rng.random(n) < 0.1), rng.integers(5, 200, size=n), -1)
    second = np.where(rng.random(n) < 0.15, join_day + rng.integers(3, 120, size=n), -1)
    ids = [f"kunde-{i + 1:07d}" for i in range(n)]
    return Population(seed=seed, user_id=ids, anonymous_id=_hex_ids(rng, n), second_device_id=_hex_ids(rng, n),
                      join_day=join_day, purchase_rate=purchase_rate, dropout_p=dropout_p, browse_rate=browse_rate,
                      affinity=affinity, cares_sustainability=cares, price_sensitivity=price_sens,
                      incentive_type=incentive, preferred_channel=channel, preferred_hour=hour, birthday=born,
                      locale=locale, city=city, lat=lat, lon=lon,
                      first_name=rng.integers(0, len(FIRST_NAMES), size=n),
                      last_name=rng.integers(0, len(LAST_NAMES), size=n), consent=consent,
                      revoke_after_days=revoke, lead_signup_p=rng.beta(1.0, 12.0, size=n),
                      second_device_day=second)
