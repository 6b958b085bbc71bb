"""`{{ value|usd }}`: a USD amount readable at a glance, however small (calls cost fractions of a cent)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django import template

register = template.Library()


@register.filter
def usd(value: Any) -> str:
    """$12.34 from a dollar up, $0.0123 down to a cent, then up to four significant digits ($0.00001234,
    $0.000024); a dash when no price is known. The playground's script formats the same way."""
    if value is None or value == "":
        return "–"
    try:
        amount = Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        return "–"
    size = abs(amount)
    if size == 0:
        return "$0.00"
    if size >= 1:
        text = f"{amount:,.2f}"
    elif size >= Decimal("0.01"):
        text = f"{amount:.4f}"
    else:
        # Four significant digits: as many decimals as the first non-zero digit needs, plus three.
        places = min(-size.adjusted() + 3, 10)
        text = f"{amount:.{places}f}".rstrip("0")
    return f"-${text[1:]}" if text.startswith("-") else f"${text}"
