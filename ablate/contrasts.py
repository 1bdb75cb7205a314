"""Contrasts: the linear combinations of variant means that a study's effects and claims estimate.

Reads nothing and writes nothing; pure Python, so that :mod:`ablate.study` can validate claims
without numpy. :mod:`ablate.effects` estimates these contrasts from runs.

Effects of factors use treatment coding: each factor has a reference level (the baseline
variant's level, else its first), and

- the effect of a factor's level is the difference it makes to the baseline, the other factors
  held at their reference levels (Table 2: ``dwt`` = ``dwt - baseline``);
- an interaction is the difference of those differences (``dwt:attention`` =
  ``dwt_attention - dwt - attention + baseline``), and so on for higher orders.

These are the coefficients of an OLS fit of the full factorial model in treatment coding (what
statsmodels' ``C(dwt) * C(attention)`` reports). The main effect averaged over the other factors'
levels is not one of them; for two factors of two levels it is the effect plus half the interaction.

A claim is ``SIDE > SIDE`` or ``SIDE < SIDE``, several joined by ``and``; a side is a variant name,
``effect(factor)`` (``effect(factor[level])`` for factors of more than two levels),
``interaction(f, g, ...)`` (with ``[level]`` likewise), or a number. The difference of the two
sides must not depend on the mIoU level itself: a variant compares with a variant, an effect
with a number or another effect.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Factor:
    """A factor of a factorial study: named levels, each a set of dotted config overrides."""

    name: str
    levels: dict[str, dict]  # level -> overrides, in file order
    reference: str  # the level effects are measured from


@dataclass(frozen=True)
class Contrast:
    """``sum(weight * mean of variant) + constant``."""

    weights: tuple[tuple[str, float], ...]  # (variant, weight), nonzero weights only
    constant: float = 0.0

    def text(self) -> str:
        """``"dwt_attention − dwt − attention + baseline"``, as the reports print it."""
        parts = [("\u2212 " if w < 0 else "+ ") + ("" if abs(w) == 1 else f"{abs(w):g}\u00b7") + name
                 for name, w in self.weights]
        if self.constant:
            parts.append(("\u2212 " if self.constant < 0 else "+ ") + f"{abs(self.constant):g}")
        text = " ".join(parts)
        return text[2:] if text.startswith("+ ") else text

    def key(self) -> tuple:
        """What two equal contrasts share, whatever the order of their weights."""
        return tuple(sorted(self.weights)), self.constant

    def of(self, means: dict[str, float | None]) -> float | None:
        """The contrast of ``means`` (the paper's mIoU, say); None when a weighted variant has none."""
        values = [means.get(name) for name, _ in self.weights]
        if any(v is None for v in values):
            return None
        return sum(w * v for (_, w), v in zip(self.weights, values)) + self.constant


@dataclass(frozen=True)
class Term:
    """One effect of the factorial model: a main effect (one factor) or an interaction (several)."""

    name: str  # "dwt", "dwt:attention", "size[large]"
    levels: tuple[tuple[str, str], ...]  # (factor, level compared with the reference)
    contrast: Contrast


def term_name(levels: tuple[tuple[str, str], ...], factors: dict[str, Factor]) -> str:
    """``dwt:attention``; a factor of more than two levels names its level: ``size[large]``."""
    return ":".join(f if len(factors[f].levels) == 2 else f"{f}[{level}]" for f, level in levels)


def term_contrast(levels: tuple[tuple[str, str], ...], factors: dict[str, Factor],
                  cells: dict[tuple[str, ...], str]) -> Contrast:
    """Treatment-coded effect of ``levels``: the alternating sum over the corners they span.

    Args:
        levels: the factors of the term, each with its compared level.
        factors: every factor of the study, in file order.
        cells: the variant of each level combination (levels in factor order).
    """
    chosen = dict(levels)
    weights: dict[str, float] = {}
    for size in range(len(levels), -1, -1):  # the compared corner first: "dwt_attention - dwt - ..."
        for subset in itertools.combinations(chosen, size):
            corner = tuple(chosen[f] if f in subset else factor.reference for f, factor in factors.items())
            variant = cells.get(corner)
            if variant is None:
                raise ValueError("no variant has the levels " + ", ".join(f"{f}={lv}" for f, lv in zip(factors, corner)))
            weights[variant] = weights.get(variant, 0.0) + (-1.0) ** (len(levels) - size)
    return _contrast(weights)


def factorial_terms(factors: dict[str, Factor], cells: dict[tuple[str, ...], str]) -> list[Term]:
    """Every main effect, then every interaction by order, each level against its factor's reference."""
    terms = []
    for size in range(1, len(factors) + 1):
        for names in itertools.combinations(factors, size):
            compared = [[level for level in factors[f].levels if level != factors[f].reference] for f in names]
            for levels in itertools.product(*compared):
                pairs = tuple(zip(names, levels))
                terms.append(Term(term_name(pairs, factors), pairs, term_contrast(pairs, factors, cells)))
    return terms


# --------------------------------------------------------------------------- claims


@dataclass(frozen=True)
class Side:
    """One side of a comparison: a variant, an effect or interaction, or a number."""

    kind: str  # "variant" | "effect" | "interaction" | "number"
    name: str = ""  # the variant
    args: tuple[tuple[str, str | None], ...] = ()  # (factor, level or None) of an effect or interaction
    value: float = 0.0  # the number


@dataclass(frozen=True)
class Comparison:
    """``lhs > rhs`` or ``lhs < rhs``; its contrast is ``lhs - rhs``."""

    text: str
    lhs: Side
    op: str  # ">" | "<"
    rhs: Side


@dataclass(frozen=True)
class Claim:
    """A claim of the study: its words and the comparisons that must all hold."""

    text: str  # the claim in words (the test itself when none is given)
    test: str
    parts: tuple[Comparison, ...]
    location: str  # "table2.yaml:12"


_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"  # variant, factor and level names (ablate.runs.bad_name allows these)


def parse_test(text: str) -> tuple[Comparison, ...]:
    """The comparisons of a claim's test (``"a > b and effect(f) > 0"``); ValueError says what is wrong."""
    parts = []
    for chunk in re.split(r"\s+and\s+", text.strip()):
        match = re.fullmatch(r"(.+?)\s*([<>])\s*(.+)", chunk.strip())
        if not match:
            raise ValueError(f"`{chunk.strip()}` is not a comparison: write `A > B` or `A < B`")
        lhs, op, rhs = match.groups()
        parts.append(Comparison(chunk.strip(), _side(lhs), op, _side(rhs)))
    return tuple(parts)


def _side(text: str) -> Side:
    text = text.strip()
    if re.fullmatch(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)", text):
        return Side("number", value=float(text))
    if re.fullmatch(_NAME, text):
        return Side("variant", name=text)
    call = re.fullmatch(r"(effect|interaction)\s*\((.*)\)", text)
    if not call:
        raise ValueError(f"`{text}`: expected a variant, a number, `effect(factor)` or "
                         "`interaction(factor, factor)`")
    args = []
    for arg in (a.strip() for a in call.group(2).split(",")):
        found = re.fullmatch(rf"({_NAME})\s*(?:\[\s*({_NAME})\s*\])?", arg)
        if not found:
            raise ValueError(f"`{text}`: `{arg}` is not `factor` or `factor[level]`")
        args.append((found.group(1), found.group(2)))
    if call.group(1) == "effect" and len(args) != 1:
        raise ValueError(f"`{text}`: `effect` takes one factor; `interaction` takes several")
    if call.group(1) == "interaction" and len(args) < 2:
        raise ValueError(f"`{text}`: `interaction` takes two or more factors")
    return Side(call.group(1), args=tuple(args))


def comparison_contrast(part: Comparison, factors: dict[str, Factor], cells: dict[tuple[str, ...], str],
                        variants: list[str]) -> Contrast:
    """``lhs - rhs`` as a contrast of variant means; ValueError names an unknown variant, factor or level."""
    weights: dict[str, float] = {}
    constant = 0.0
    for side, sign in ((part.lhs, 1.0), (part.rhs, -1.0)):
        if side.kind == "number":
            constant += sign * side.value
            continue
        if side.kind == "variant":
            if side.name not in variants:
                raise ValueError(_unknown(side.name, "variant", variants))
            side_weights = {side.name: 1.0}
        else:
            if not factors:
                raise ValueError(f"`{side.kind}(...)` needs `factors:` in the study")
            side_weights = dict(term_contrast(_levels(side, factors), factors, cells).weights)
        for name, w in side_weights.items():
            weights[name] = weights.get(name, 0.0) + sign * w
    if abs(sum(weights.values())) > 1e-9:
        raise ValueError(f"`{part.text}` compares a variant's mIoU with a number or an effect; compare a "
                         "variant with a variant, an effect with a number or an effect")
    if not any(weights.values()):
        raise ValueError(f"`{part.text}` compares a thing with itself")
    return _contrast(weights, constant)


def _contrast(weights: dict[str, float], constant: float = 0.0) -> Contrast:
    """The nonzero weights, in the order they were first added (``lhs`` before ``rhs``)."""
    return Contrast(tuple((v, w) for v, w in weights.items() if w), constant)


def _levels(side: Side, factors: dict[str, Factor]) -> tuple[tuple[str, str], ...]:
    levels = []
    for factor, level in side.args:
        if factor not in factors:
            raise ValueError(_unknown(factor, "factor", factors))
        spec = factors[factor]
        others = [lv for lv in spec.levels if lv != spec.reference]
        if level is None:
            if len(others) != 1:
                raise ValueError(f"factor `{factor}` has {len(spec.levels)} levels: name one, e.g. "
                                 f"`{factor}[{others[0]}]`")
            level = others[0]
        elif level not in spec.levels:
            raise ValueError(f"factor `{factor}`: " + _unknown(level, "level", spec.levels))
        elif level == spec.reference:
            raise ValueError(f"`{factor}[{level}]` is the reference level; effects compare the others with it")
        if factor in dict(levels):
            raise ValueError(f"factor `{factor}` appears twice in `{side.kind}(...)`")
        levels.append((factor, level))
    order = list(factors)
    return tuple(sorted(levels, key=lambda fl: order.index(fl[0])))


def _unknown(name: str, kind: str, choices) -> str:
    from ablate.errors import one_of

    return one_of(name, kind, choices)
