"""The demo shop's German catalog: products, brands, prices, stock, accessories, consumables, stores."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

CATEGORIES = ("Küche", "Garten", "Werkzeug", "Elektronik", "Spielzeug", "Mode", "Drogerie")
CATEGORIES_EN = ("Kitchen", "Garden", "Tools", "Electronics", "Toys", "Fashion", "Drugstore")

BRANDS: dict[str, tuple[str, ...]] = {
    "Küche": ("Kochfreund", "Silberlöffel", "Herdglück", "Pfannenwerk"),
    "Garten": ("Grünzeug", "Beetmeister", "Gartenlust", "Rasenreich"),
    "Werkzeug": ("Schraubwerk", "Meisterhand", "Bohrkraft", "Hobelbank"),
    "Elektronik": ("Funkwelle", "Stromer", "Klangwerk", "Pixelhaus"),
    "Spielzeug": ("Kinderglück", "Holzwurm", "Spielkiste", "Bauklotz"),
    "Mode": ("Nordfaden", "Stilbruch", "Wollwerk", "Isarlinie"),
    "Drogerie": ("Reinlich", "Blütenzart", "Frischwerk", "Hautnah"),
}

# kind: "tool" / "electronics" (warranty), "toy_battery" (needs batteries), "battery", "spare:<group>",
# "tool:<group>" (has spare parts of that group). runout: typical days until a consumable is used up.
# (name, English name, subcategory, price in EUR, kind, runout_days)
_BASE: dict[str, list[tuple[str, str, str, float, str, int | None]]] = {
    "Küche": [
        ("Bratpfanne", "Frying pan", "Kochgeschirr", 39.0, "", None),
        ("Kochtopf-Set", "Cookware set", "Kochgeschirr", 89.0, "", None),
        ("Messerblock", "Knife block", "Messer", 69.0, "", None),
        ("Kochmesser", "Chef's knife", "Messer", 45.0, "", None),
        ("Schneidebrett", "Cutting board", "Zubehör", 19.0, "", None),
        ("Kaffeebohnen 1 kg", "Coffee beans 1 kg", "Vorrat", 16.0, "", 30),
        ("Espressokocher", "Moka pot", "Kaffee & Tee", 29.0, "", None),
        ("Teekanne", "Teapot", "Kaffee & Tee", 25.0, "", None),
        ("Wasserfilter-Kartuschen 3er", "Water filter cartridges (3)", "Vorrat", 22.0, "", 90),
        ("Backform", "Baking tin", "Backen", 15.0, "", None),
        ("Vorratsdosen-Set", "Storage jar set", "Zubehör", 24.0, "", None),
    ],
    "Garten": [
        ("Gartenschlauch 20 m", "Garden hose 20 m", "Bewässerung", 34.0, "", None),
        ("Rasensprenger", "Lawn sprinkler", "Bewässerung", 27.0, "", None),
        ("Blumenerde 40 l", "Potting soil 40 l", "Erde & Dünger", 9.0, "", 60),
        ("Rasendünger 5 kg", "Lawn fertiliser 5 kg", "Erde & Dünger", 24.0, "", 90),
        ("Gartenschere", "Pruning shears", "Gartengeräte", 29.0, "tool:schere", None),
        ("Ersatzklingen für Gartenschere", "Spare blades for pruning shears", "Gartengeräte", 12.0,
         "spare:schere", None),
        ("Hochbeet", "Raised bed", "Pflanzen", 129.0, "", None),
        ("Vogelfutter 5 kg", "Bird seed 5 kg", "Tierwelt", 14.0, "", 45),
        ("Gartenstuhl", "Garden chair", "Gartenmöbel", 59.0, "", None),
        ("Rasenmäher Akku", "Cordless lawn mower", "Gartengeräte", 299.0, "tool:maeher", None),
        ("Ersatzmesser für Rasenmäher", "Spare blade for lawn mower", "Gartengeräte", 24.0, "spare:maeher", None),
    ],
    "Werkzeug": [
        ("Akku-Bohrschrauber 18 V", "Cordless drill 18 V", "Elektrowerkzeug", 129.0, "tool:bohrer", None),
        ("Bohrer-Set 15-teilig", "Drill bit set (15 pcs)", "Zubehör", 19.0, "spare:bohrer", None),
        ("Ersatzakku 18 V", "Spare battery 18 V", "Zubehör", 59.0, "spare:bohrer", None),
        ("Stichsäge", "Jigsaw", "Elektrowerkzeug", 99.0, "tool:saege", None),
        ("Stichsägeblätter 10er", "Jigsaw blades (10)", "Zubehör", 14.0, "spare:saege", None),
        ("Winkelschleifer", "Angle grinder", "Elektrowerkzeug", 79.0, "tool:schleifer", None),
        ("Trennscheiben 10er", "Cutting discs (10)", "Zubehör", 12.0, "spare:schleifer", None),
        ("Schraubendreher-Set", "Screwdriver set", "Handwerkzeug", 29.0, "", None),
        ("Wasserwaage", "Spirit level", "Handwerkzeug", 22.0, "", None),
        ("Werkzeugkoffer", "Tool case", "Aufbewahrung", 49.0, "", None),
        ("Schrauben-Sortiment", "Screw assortment", "Befestigung", 17.0, "", 120),
    ],
    "Elektronik": [
        ("Bluetooth-Lautsprecher", "Bluetooth speaker", "Audio", 59.0, "electronics", None),
        ("Kopfhörer kabellos", "Wireless headphones", "Audio", 89.0, "electronics", None),
        ("Smartwatch", "Smartwatch", "Wearables", 179.0, "electronics", None),
        ("Powerbank 10000 mAh", "Power bank 10,000 mAh", "Zubehör", 29.0, "electronics", None),
        ("USB-C-Ladekabel", "USB-C charging cable", "Zubehör", 12.0, "", None),
        ("E-Book-Reader", "E-book reader", "Lesen", 129.0, "electronics", None),
        ("Tablet 10 Zoll", "10-inch tablet", "Computer", 249.0, "electronics", None),
        ("Batterien AA 8er-Pack", "AA batteries (8)", "Batterien", 7.0, "battery", 60),
        ("Batterien AAA 8er-Pack", "AAA batteries (8)", "Batterien", 7.0, "battery", 60),
        ("Akku-Ladegerät", "Battery charger", "Batterien", 25.0, "electronics", None),
        ("Webcam HD", "HD webcam", "Computer", 49.0, "electronics", None),
    ],
    "Spielzeug": [
        ("Ferngesteuertes Auto", "Remote-control car", "Fahrzeuge", 49.0, "toy_battery", None),
        ("Holzeisenbahn", "Wooden railway", "Kleinkind", 59.0, "", None),
        ("Puzzle 1000 Teile", "1000-piece puzzle", "Puzzle & Spiele", 14.0, "", None),
        ("Plüschbär", "Teddy bear", "Kuscheltiere", 19.0, "", None),
        ("Experimentierkasten", "Science kit", "Lernen", 39.0, "toy_battery", None),
        ("Brettspiel Familie", "Family board game", "Puzzle & Spiele", 29.0, "", None),
        ("Bausteine 500 Teile", "Building bricks (500)", "Bauen", 34.0, "", None),
        ("Sprechende Puppe", "Talking doll", "Puppen", 35.0, "toy_battery", None),
        ("Kinderdrohne", "Kids' drone", "Fahrzeuge", 69.0, "toy_battery", None),
        ("Malset", "Painting set", "Basteln", 16.0, "", None),
    ],
    "Mode": [
        ("T-Shirt Bio-Baumwolle", "Organic cotton T-shirt", "Oberteile", 19.0, "", None),
        ("Jeans", "Jeans", "Hosen", 69.0, "", None),
        ("Regenjacke", "Rain jacket", "Jacken", 99.0, "", None),
        ("Sneaker", "Sneakers", "Schuhe", 79.0, "", None),
        ("Wollpullover", "Wool jumper", "Oberteile", 79.0, "", None),
        ("Socken 5er-Pack", "Socks (5 pairs)", "Wäsche", 15.0, "", 120),
        ("Strickmütze", "Knitted beanie", "Accessoires", 19.0, "", None),
        ("Ledergürtel", "Leather belt", "Accessoires", 35.0, "", None),
        ("Sommerkleid", "Summer dress", "Kleider", 59.0, "", None),
        ("Hemd", "Shirt", "Oberteile", 45.0, "", None),
    ],
    "Drogerie": [
        ("Zahnpasta", "Toothpaste", "Zahnpflege", 3.0, "", 30),
        ("Duschgel", "Shower gel", "Körperpflege", 4.0, "", 30),
        ("Shampoo", "Shampoo", "Haarpflege", 5.0, "", 45),
        ("Sonnencreme LSF 30", "Sun cream SPF 30", "Sonnenschutz", 12.0, "", 60),
        ("Waschmittel 40 WL", "Laundry detergent (40 loads)", "Haushalt", 14.0, "", 60),
        ("Handcreme", "Hand cream", "Körperpflege", 6.0, "", 45),
        ("Rasierklingen 8er", "Razor blades (8)", "Rasur", 18.0, "", 60),
        ("Elektrische Zahnbürste", "Electric toothbrush", "Zahnpflege", 69.0, "electronics", None),
        ("Aufsteckbürsten 4er", "Replacement brush heads (4)", "Zahnpflege", 16.0, "", 90),
        ("Spülmaschinentabs 60er", "Dishwasher tablets (60)", "Haushalt", 11.0, "", 60),
    ],
}
_VARIANTS = (("", ""), ("Classic", "Classic"), ("Pro", "Pro"), ("Eco", "Eco"), ("Kompakt", "Compact"),
             ("Premium", "Premium"), ("Basic", "Basic"))
_NEW_LINES = (("Plus", "Plus"), ("Smart", "Smart"), ("Natur", "Nature"), ("Edition 2", "Edition 2"),
              ("Max", "Max"), ("Leicht", "Light"))
ECO_LABELS = ("Blauer Engel", "EU Ecolabel", "FSC", "GOTS", "Fairtrade")


@dataclass(frozen=True)
class Store:
    store_id: str
    name: str
    city: str
    address: str
    lat: float
    lon: float
    opened_day: int | None  # simulated day of the opening; None: open before the history starts

    def as_dict(self) -> dict[str, Any]:
        return {"store_id": self.store_id, "name": self.name, "city": self.city, "address": self.address,
                "lat": self.lat, "lon": self.lon}


def stores(days: int) -> list[Store]:
    """The physical shops; one opens during the simulated year (store_opening tactic)."""
    return [
        Store("laden-berlin", "Tante Emma Berlin-Mitte", "Berlin", "Torstraße 12, 10119 Berlin", 52.5290, 13.4010,
              None),
        Store("laden-hamburg", "Tante Emma Hamburg-Ottensen", "Hamburg", "Ottenser Hauptstraße 5, 22765 Hamburg",
              53.5520, 9.9300, None),
        Store("laden-muenchen", "Tante Emma München-Schwabing", "München", "Leopoldstraße 40, 80802 München",
              48.1600, 11.5850, None),
        Store("laden-koeln", "Tante Emma Köln-Ehrenfeld", "Köln", "Venloer Straße 300, 50823 Köln", 50.9490, 6.9180,
              max(1, int(days * 0.6))),
    ]


@dataclass
class Catalog:
    """All products the simulated year will ever have, as parallel arrays (index = product number)."""

    sku: list[str]
    name: list[str]
    name_en: list[str]
    category: np.ndarray  # top-level category index
    path: list[str]
    brand: list[str]
    base_price_cents: np.ndarray
    price_cents: np.ndarray  # current price; changes during the simulation
    stock: np.ndarray
    sustainable: np.ndarray
    eco_label: list[str | None]
    warranty_months: np.ndarray  # 0: none
    runout_days: np.ndarray  # 0: not a consumable
    accessories: list[list[int]]
    popularity: np.ndarray
    launch_day: np.ndarray  # 0: in the catalog from the start
    successor_of: np.ndarray  # -1: none
    successor: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # set on launch

    def __len__(self) -> int:
        return len(self.sku)

    def row(self, i: int, *, day: int) -> dict[str, Any]:
        """The product as upsert_products takes it, as of the given simulated day."""
        attrs: dict[str, Any] = {"name_en": self.name_en[i], "sustainable": bool(self.sustainable[i])}
        if self.eco_label[i]:
            attrs["eco_label"] = self.eco_label[i]
        if self.warranty_months[i]:
            attrs["warranty_months"] = int(self.warranty_months[i])
        if self.runout_days[i]:
            attrs["runout_days"] = int(self.runout_days[i])
        if self.accessories[i]:
            attrs["accessory_skus"] = [self.sku[j] for j in self.accessories[i]]
        if self.successor_of[i] >= 0:
            attrs["predecessor_sku"] = self.sku[self.successor_of[i]]
        if self.successor[i] >= 0 and self.launch_day[self.successor[i]] <= day:
            attrs["successor_sku"] = self.sku[self.successor[i]]
        return {"sku": self.sku[i], "name": self.name[i], "category": self.path[i],
                "price": int(self.price_cents[i]) / 100, "currency": "EUR", "stock": int(self.stock[i]),
                "brand": self.brand[i], "url": f"https://shop.example.com/p/{self.sku[i].lower()}",
                "image_url": f"https://shop.example.com/img/{self.sku[i].lower()}.jpg", "attributes": attrs,
                "active": True}


def _round_price(cents: np.ndarray) -> np.ndarray:
    # Shelf prices end in ,99 or ,49 like in a real shop.
    euros = np.maximum(1, np.floor(cents / 100))
    return (euros * 100 + np.where(euros < 10, 49, 99)).astype(np.int64)


def generate_catalog(rng: np.random.Generator, *, days: int) -> Catalog:
    """Build the catalog: ~5 variants per base product, some launched during the year, some successors."""
    sku, name, name_en, cat, path, brand, base, kind, runout, launch, succ_of = ([] for _ in range(11))
    plain: list[tuple[str, str]] = []  # base names without brand and variant
    group_of_tool: dict[int, str] = {}
    spares: dict[str, list[int]] = {}
    batteries: list[int] = []
    toys: list[int] = []
    for c, cname in enumerate(CATEGORIES):
        for b, (bname, bname_en, sub, price, knd, rdays) in enumerate(_BASE[cname]):
            n_var = int(rng.integers(3, 7))
            variants = rng.choice(len(_VARIANTS), size=n_var, replace=False)
            for v in variants:
                i = len(sku)
                de, en = _VARIANTS[int(v)]
                br = str(rng.choice(BRANDS[cname]))
                sku.append(f"{cname[:2].upper().replace('Ü', 'UE')}-{b:02d}{i:04d}")
                name.append(f"{br} {bname}" + (f" {de}" if de else ""))
                name_en.append(f"{br} {bname_en}" + (f" {en}" if en else ""))
                cat.append(c)
                path.append(f"{cname} > {sub}")
                brand.append(br)
                plain.append((bname, bname_en))
                factor = {"Pro": 1.5, "Premium": 1.8, "Basic": 0.7, "Kompakt": 0.85, "Eco": 1.15}.get(de, 1.0)
                base.append(price * 100 * factor * float(rng.lognormal(0, 0.15)))
                kind.append(knd)
                runout.append(rdays or 0)
                launch.append(0)
                succ_of.append(-1)
                if knd.startswith("tool:"):
                    group_of_tool[i] = knd.split(":", 1)[1]
                elif knd.startswith("spare:"):
                    spares.setdefault(knd.split(":", 1)[1], []).append(i)
                elif knd == "battery":
                    batteries.append(i)
                elif knd == "toy_battery":
                    toys.append(i)
    n0 = len(sku)
    # New products during the year: ~12 % of the catalog; half of them successors of an existing product.
    n_new = max(2, n0 // 8)
    candidates = [i for i in range(n0) if kind[i] in ("electronics", "toy_battery") or kind[i].startswith("tool:")]
    pred = rng.choice(candidates, size=min(n_new // 2, len(candidates)), replace=False)
    launch_days = np.sort(rng.integers(max(1, days // 12), max(2, days - 5), size=n_new))
    for k in range(n_new):
        i = len(sku)
        if k < len(pred):
            p = int(pred[k])
            sku.append(f"{sku[p]}-N{k:02d}")
            name.append(f"{name[p]} (2. Generation)")
            name_en.append(f"{name_en[p]} (2nd generation)")
            src = p
            base.append(base[p] * 1.1)
        else:
            src = int(rng.integers(0, n0))
            de, en = _NEW_LINES[k % len(_NEW_LINES)]
            sku.append(f"{sku[src].split('-')[0]}-NEU{k:03d}")
            name.append(f"{brand[src]} {plain[src][0]} {de}")
            name_en.append(f"{brand[src]} {plain[src][1]} {en}")
            base.append(base[src] * float(rng.lognormal(0.05, 0.2)))
        cat.append(cat[src])
        path.append(path[src])
        brand.append(brand[src])
        plain.append(plain[src])
        kind.append(kind[src])
        runout.append(runout[src])
        launch.append(int(launch_days[k]))
        succ_of.append(int(src) if k < len(pred) else -1)
        if kind[src].startswith("tool:"):
            group_of_tool[i] = group_of_tool[src]
        elif kind[src] == "toy_battery":
            toys.append(i)
    n = len(sku)
    accessories: list[list[int]] = [[] for _ in range(n)]
    for i, g in group_of_tool.items():
        accessories[i] = list(spares.get(g, []))[:4]
    for i in toys:
        accessories[i] = batteries[:2]
    categories = np.array(cat)
    warranty = np.zeros(n, dtype=np.int64)
    is_tool = np.array([k == "electronics" or k.startswith("tool:") for k in kind])
    warranty[is_tool] = rng.choice([24, 36, 60], size=int(is_tool.sum()), p=[0.6, 0.3, 0.1])
    sustainable = rng.random(n) < np.where(np.array(["Eco" in x for x in name]), 0.95, 0.22)
    labels = [str(rng.choice(ECO_LABELS)) if s else None for s in sustainable]
    price = _round_price(np.array(base))
    successor = np.full(n, -1, dtype=np.int64)
    for i, p in enumerate(succ_of):
        if p >= 0:
            successor[p] = i
    # Zipf-like popularity: a few best sellers per category, a long tail.
    popularity = rng.pareto(1.2, size=n) + 0.2
    return Catalog(sku=sku, name=name, name_en=name_en, category=categories, path=path, brand=brand,
                   base_price_cents=price.copy(), price_cents=price, stock=rng.integers(20, 400, size=n),
                   sustainable=sustainable, eco_label=labels, warranty_months=warranty,
                   runout_days=np.array(runout, dtype=np.int64), accessories=accessories, popularity=popularity,
                   launch_day=np.array(launch, dtype=np.int64), successor_of=np.array(succ_of, dtype=np.int64),
                   successor=successor)
