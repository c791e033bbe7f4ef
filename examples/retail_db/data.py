"""The retail database: its schema and a seeded, deterministic set of users, products and orders.

The same seed always gives the same rows, so a trajectory's environment reference only needs
``{"dataset": "retail-db", "seed": N}`` for the sandbox to rebuild the exact world the production
run started from. Users carry e-mail addresses and phone numbers (the personal data that capture
redaction is about); order ids look like ``#W1234567``, user ids like ``emma_kim_4821``, product
ids are ten digits.
"""

from __future__ import annotations

import random
import sqlite3

DATASET = "retail-db"

SCHEMA = """
CREATE TABLE users (
    user_id TEXT PRIMARY KEY,
    first_name TEXT NOT NULL,
    last_name TEXT NOT NULL,
    email TEXT NOT NULL UNIQUE,
    phone TEXT NOT NULL UNIQUE,
    address1 TEXT NOT NULL,
    address2 TEXT NOT NULL,
    city TEXT NOT NULL,
    state TEXT NOT NULL,
    zip TEXT NOT NULL
);
CREATE TABLE products (
    product_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    category TEXT NOT NULL,
    price REAL NOT NULL,
    stock INTEGER NOT NULL
);
CREATE TABLE orders (
    order_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(user_id),
    status TEXT NOT NULL CHECK (status IN ('pending', 'processed', 'delivered', 'cancelled')),
    placed_on TEXT NOT NULL,
    ship_to TEXT NOT NULL,
    cancel_reason TEXT
);
CREATE TABLE order_items (
    order_id TEXT NOT NULL REFERENCES orders(order_id),
    product_id TEXT NOT NULL REFERENCES products(product_id),
    quantity INTEGER NOT NULL,
    unit_price REAL NOT NULL,
    PRIMARY KEY (order_id, product_id)
);
"""

FIRST_NAMES = ["Emma", "Liam", "Olivia", "Noah", "Ava", "Mateo", "Sofia", "Yusuf", "Mei", "Aarav", "Chloe", "Omar", "Ingrid", "Kofi"]
LAST_NAMES = ["Kim", "Garcia", "Nguyen", "Smith", "Haddad", "Rossi", "Okafor", "Silva", "Novak", "Patel", "Johnson", "Larsen"]
STREETS = ["Maple Avenue", "Cedar Lane", "Hillcrest Road", "Lakeview Drive", "Elm Street", "Sunset Boulevard", "Pine Court"]
CITIES = [("Portland", "OR", "97"), ("Austin", "TX", "78"), ("Columbus", "OH", "43"), ("Denver", "CO", "80"), ("Raleigh", "NC", "27")]
PRODUCTS = [
    ("Trail Running Shoes", "footwear", 129.0),
    ("Merino Wool Socks", "apparel", 18.5),
    ("Insulated Water Bottle", "gear", 34.99),
    ("Packable Rain Jacket", "apparel", 149.0),
    ("Headlamp 400 lm", "gear", 42.0),
    ("Camp Stove", "gear", 89.95),
    ("Hiking Backpack 30L", "bags", 119.0),
    ("Fleece Pullover", "apparel", 64.0),
    ("Trekking Poles", "gear", 79.5),
    ("Sleeping Bag -5C", "gear", 229.0),
    ("Sun Hat", "apparel", 27.0),
    ("First Aid Kit", "gear", 31.25),
]
STATUSES = ["pending", "pending", "processed", "delivered", "delivered", "cancelled"]


def create_database(connection: sqlite3.Connection, seed: int = 0, *, users: int = 14) -> None:
    """Create the tables in ``connection`` and fill them with the rows of ``seed`` (deterministic)."""
    rng = random.Random(f"{DATASET}:{seed}")
    connection.executescript(SCHEMA)
    product_ids = _insert_products(connection, rng)
    used_order_ids: set[str] = set()
    for i in range(users):
        user_id = _insert_user(connection, rng, i)
        for _ in range(rng.randint(1, 3)):
            _insert_order(connection, rng, user_id, product_ids, used_order_ids)
    connection.commit()


def _insert_products(connection: sqlite3.Connection, rng: random.Random) -> list[str]:
    ids = []
    for name, category, price in PRODUCTS:
        product_id = str(rng.randint(10**9, 10**10 - 1))
        connection.execute("INSERT INTO products VALUES (?, ?, ?, ?, ?)", (product_id, name, category, price, rng.randint(0, 40)))
        ids.append(product_id)
    return ids


def _insert_user(connection: sqlite3.Connection, rng: random.Random, index: int) -> str:
    first, last = FIRST_NAMES[index % len(FIRST_NAMES)], rng.choice(LAST_NAMES)
    number = rng.randint(1000, 9999)
    user_id = f"{first}_{last}_{number}".lower()
    city, state, zip_prefix = rng.choice(CITIES)
    connection.execute(
        "INSERT INTO users VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            user_id,
            first,
            last,
            f"{first}.{last}{number % 100}@example.com".lower(),
            f"{rng.randint(200, 989)}-555-{rng.randint(1000, 9999)}",
            f"{rng.randint(10, 999)} {rng.choice(STREETS)}",
            rng.choice(["", f"Suite {rng.randint(100, 999)}", f"Apt {rng.randint(1, 40)}"]),
            city,
            state,
            f"{zip_prefix}{rng.randint(100, 999)}",
        ),
    )
    return user_id


def _insert_order(connection: sqlite3.Connection, rng: random.Random, user_id: str, product_ids: list[str], used: set[str]) -> None:
    order_id = f"#W{rng.randint(10**6, 10**7 - 1)}"
    while order_id in used:
        order_id = f"#W{rng.randint(10**6, 10**7 - 1)}"
    used.add(order_id)
    row = connection.execute("SELECT address1, address2, city, state, zip FROM users WHERE user_id = ?", (user_id,)).fetchone()
    ship_to = ", ".join(part for part in row if part)
    status = rng.choice(STATUSES)
    placed_on = f"2026-{rng.randint(8, 11):02d}-{rng.randint(1, 28):02d}"
    reason = "no longer needed" if status == "cancelled" else None
    connection.execute("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?)", (order_id, user_id, status, placed_on, ship_to, reason))
    for product_id in rng.sample(product_ids, rng.randint(1, 3)):
        price = connection.execute("SELECT price FROM products WHERE product_id = ?", (product_id,)).fetchone()[0]
        connection.execute("INSERT INTO order_items VALUES (?, ?, ?, ?)", (order_id, product_id, rng.randint(1, 3), price))
