"""`shop catalog load FILE`: validate a catalog document and apply it, updating by sku.

A product's name in another language than the catalog's own (`name_ja`) stays in the file: the
shop's screens read it from there (localized_product_names), the database keeps `name`.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import yaml
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from models.carts import LARGEST_CHARGE
from models.catalog import Product, Stock
from models.errors import InvalidInput
from models.shipping import ACCEPTED_PREFECTURES, DEFAULT, ShippingRate, canonical_prefecture
from models.text import unstorable


# Names for the shop's screens in other languages, by language: "name_ja" is the Japanese name.
LOCALIZED_NAMES = ("name_ja",)

# Prices, stock, weights and fees are 32-bit INTEGER columns (alembic/versions/0001): a larger
# number is refused here, naming its field, rather than by the database with a traceback.
LARGEST_AMOUNT = 2**31 - 1

# The columns' lengths (alembic/versions/0001): a longer sku or name is refused here, naming its field.
SKU_LENGTH = Product.__table__.c.sku.type.length
NAME_LENGTH = Product.__table__.c.name.type.length


def read_catalog(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    as_json = path.suffix.lower() == ".json"
    try:
        data = json.loads(text) if as_json else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise InvalidInput(f"{path} is not valid {'JSON' if as_json else 'YAML'}: {exc}") from exc
    except RecursionError:  # "[[[[…" thousands deep: past Python's stack, as the webhook's parse_event_json says
        raise InvalidInput(f"{path} is nested too deeply to read: a catalog is a few levels deep") from None
    validate_catalog(data)
    return data


def _require(cond: bool, message: str, field: str) -> None:
    if not cond:
        raise InvalidInput(message, field=field)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_count(value, field: str) -> None:
    """An integer from 0 to LARGEST_AMOUNT: an amount in minor units, a stock, a weight."""
    _require(_is_int(value) and 0 <= value <= LARGEST_AMOUNT,
             f"{field} must be an integer from 0 to {LARGEST_AMOUNT}", field)


def sku_problem(sku) -> str | None:
    """Why the shop could not sell a product with this sku (to follow "….sku"), else None.

    The cart API's rule for a sku it is sent (webhook_app.validation.require_string: trimmed,
    non-empty, storable, at most the column's length), so every sku loaded can be added to a cart,
    and no '/' (nor a bare '.' or '..'), so /products/<sku> and the cart screen's forms reach it.
    """
    if not isinstance(sku, str) or not sku.strip() or len(sku) > SKU_LENGTH:
        return f"must be a non-empty string of at most {SKU_LENGTH} characters"
    if sku != sku.strip():
        return "must not start or end with a space (the cart API trims the sku it is sent)"
    if problem := unstorable(sku):
        return problem
    if "/" in sku or sku in (".", ".."):
        return "must not contain '/' or be '.' or '..' (it is part of the product's address, /products/<sku>)"
    return None


def _text_problem(value) -> str | None:
    """Why a product's name cannot be stored or shown on the shop's screens, else None."""
    if not isinstance(value, str) or not value.strip() or len(value) > NAME_LENGTH:
        return f"must be a non-empty string of at most {NAME_LENGTH} characters"
    # A lone surrogate ("\ud800" in JSON) cannot be written into a page: a 500 on every screen.
    return unstorable(value)


def validate_catalog(data) -> None:
    _require(isinstance(data, dict), "the catalog must be an object", "catalog")
    currency = data.get("currency")
    _require(isinstance(currency, str) and len(currency) == 3 and currency.isascii() and currency.isalpha(),
             "currency must be a 3-letter code", "currency")
    products = data.get("products")
    _require(isinstance(products, list), "products must be a list", "products")
    seen = set()
    for i, p in enumerate(products):
        where = f"products[{i}]"
        _require(isinstance(p, dict), f"{where} must be an object", where)
        problem = sku_problem(p.get("sku"))
        _require(problem is None, f"{where}.sku {problem}", f"{where}.sku")
        _require(p["sku"] not in seen, f"{where}.sku {p['sku']} appears twice", f"{where}.sku")
        seen.add(p["sku"])
        for key in ("name", *(k for k in LOCALIZED_NAMES if k in p)):
            problem = _text_problem(p.get(key))
            _require(problem is None, f"{where}.{key} {problem}", f"{where}.{key}")
        for key in ("unit_amount", "stock"):
            _require_count(p.get(key), f"{where}.{key}")
        _require(p["unit_amount"] <= LARGEST_CHARGE, f"{where}.unit_amount is over {LARGEST_CHARGE}, the most one "
                 f"payment at Stripe can take: nobody could buy it", f"{where}.unit_amount")
        if "weight_grams" in p:
            _require_count(p["weight_grams"], f"{where}.weight_grams")
    shipping = data.get("shipping")
    if shipping is None:
        return
    _require(isinstance(shipping, dict), "shipping must be an object", "shipping")
    if shipping.get("free_over") is not None:
        _require_count(shipping["free_over"], "shipping.free_over")
    rates = shipping.get("rates")
    _require(isinstance(rates, list) and rates, "shipping.rates must be a non-empty list", "shipping.rates")
    priced = set()  # each prefecture, and the default, has exactly one fee
    for i, rate in enumerate(rates):
        where = f"shipping.rates[{i}]"
        _require(isinstance(rate, dict), f"{where} must be an object", where)
        _require_count(rate.get("fee"), f"{where}.fee")
        prefs = rate.get("prefectures")
        if prefs == DEFAULT:
            names = [DEFAULT]
        else:
            _require(isinstance(prefs, list) and prefs, f"{where}.prefectures must be a list or \"default\"",
                     f"{where}.prefectures")
            for name in prefs:
                _require(isinstance(name, str) and canonical_prefecture(name) is not None,
                         f"{where}.prefectures: unknown prefecture {name!r}: each must be {ACCEPTED_PREFECTURES}",
                         f"{where}.prefectures")
            names = [canonical_prefecture(name) for name in prefs]
        for name in names:
            _require(name not in priced, f"{where}.prefectures: {name} already has a rate", f"{where}.prefectures")
            priced.add(name)


# Skus per look-up: well under SQLite's limit of bound parameters in one statement (32,766).
SKUS_PER_QUERY = 1000


def _in_chunks(skus: list[str]) -> list[list[str]]:
    return [skus[i:i + SKUS_PER_QUERY] for i in range(0, len(skus), SKUS_PER_QUERY)]


def apply_catalog(session: Session, data: dict) -> dict:
    """Insert or update every product by sku and replace the shipping table. Returns counts.

    Stock moves by each figure's difference from the one loaded last (Stock.load_stock_figure), on
    rows locked first, in sku order as checkouts lock them: a checkout either commits before the
    lock is granted or waits for the load's commit, so the reserved units checked are the ones
    beside the on_hand written. A refusal raises before the caller commits anything.
    """
    currency = data["currency"].lower()
    products = {product.sku: product for chunk in _in_chunks(sorted(p["sku"] for p in data["products"]))
                for product in session.scalars(select(Product).where(Product.sku.in_(chunk)))}
    for chunk in _in_chunks(sorted(products)):
        session.scalars(select(Stock).where(Stock.sku.in_(chunk)).order_by(Stock.sku).with_for_update()
                        .execution_options(populate_existing=True)).all()
    # A sku another load adds meanwhile is not among `products`: inserting it too is refused by the
    # database (IntegrityError), which `shop catalog load` reports as a failed load.
    created = updated = 0
    for p in data["products"]:
        product = products.get(p["sku"])
        if product is None:
            product = Product(sku=p["sku"], stock=Stock(on_hand=0, reserved=0, loaded_stock=0))
            session.add(product)
            created += 1
        else:
            updated += 1
        product.name = p["name"]
        product.unit_amount = p["unit_amount"]
        product.currency = currency
        product.weight_grams = p.get("weight_grams", 0)
        product.stock.load_stock_figure(p["stock"])
    rates = 0
    if data.get("shipping") is not None:
        session.execute(delete(ShippingRate))
        free_over = data["shipping"].get("free_over")
        for rate in data["shipping"]["rates"]:
            names = [DEFAULT] if rate["prefectures"] == DEFAULT else [canonical_prefecture(n) for n in rate["prefectures"]]
            for name in names:
                session.add(ShippingRate(prefecture=name, fee=rate["fee"], currency=currency, free_over=free_over))
                rates += 1
    session.flush()
    return {"created": created, "updated": updated, "shipping_rates": rates,
            "products": len(session.scalars(select(Product.sku)).all())}


def localized_product_names(path: Path, language: str) -> dict[str, str]:
    """{sku: name} in `language` from the catalog file (its `name_<language>`); read again when the file changes."""
    if f"name_{language}" not in LOCALIZED_NAMES:
        return {}
    return _localized_names(str(path), path.stat().st_mtime_ns, language)


@lru_cache(maxsize=8)
def _localized_names(path: str, mtime_ns: int, language: str) -> dict[str, str]:
    key = f"name_{language}"
    return {p["sku"]: p[key].strip() for p in read_catalog(Path(path))["products"] if key in p}
