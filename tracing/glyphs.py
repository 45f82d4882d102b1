"""Labels the figures can draw: model names in any script, without glyph warnings.

matplotlib's default font (DejaVu Sans) has Latin, Greek and Cyrillic but no CJK glyphs: a Chinese,
Japanese or Korean model name draws as boxes and prints a warning per glyph on stderr. :func:`setup`
adds an installed font that has those glyphs (Noto CJK, Source Han, WenQuanYi, …; found through
matplotlib's font list) as a fallback behind the default, and :func:`drawable` returns a label
unchanged when the fonts in use have every glyph of it, else its transliteration (``anyascii``:
模型 → MoXing), else (without anyascii) its ``\\u`` escapes — quietly either way.
"""
from __future__ import annotations

import functools
import re

#: family names of fonts with CJK glyphs, tried in order
CJK_FAMILIES = re.compile(r"Noto Sans CJK|Noto Serif CJK|Noto Sans (SC|TC|JP|KR|HK)|Source Han|WenQuanYi|"
                          r"Droid Sans Fallback|AR PL|IPAex?Gothic|IPAex?Mincho|Takao|Unifont|Sarasa|"
                          r"HanaMin|Microsoft YaHei|SimHei|SimSun|MS Gothic|Malgun|PingFang|Hiragino|"
                          r"Apple SD Gothic|Heiti", re.I)


@functools.lru_cache(maxsize=None)
def _charmap(path: str) -> frozenset:
    from matplotlib.ft2font import FT2Font
    try:
        return frozenset(FT2Font(path).get_charmap())
    except (OSError, RuntimeError, ValueError):
        return frozenset()


@functools.lru_cache(maxsize=1)
def _fonts() -> tuple[tuple[str, str], ...]:
    """(family, file) of the default font and of the first installed font with CJK glyphs, if any."""
    from matplotlib import font_manager
    default = font_manager.findfont(font_manager.FontProperties(family=["sans-serif"]), fallback_to_default=True)
    out = [(font_manager.FontProperties(fname=default).get_name(), default)]
    for f in sorted(font_manager.fontManager.ttflist, key=lambda f: f.name):
        if CJK_FAMILIES.search(f.name) and 0x4E2D in _charmap(f.fname):  # 中
            out.append((f.name, f.fname))
            break
    return tuple(out)


def setup() -> None:
    """Draw with the default font, falling back to an installed CJK font glyph by glyph (when there is one)."""
    import matplotlib
    fonts = _fonts()
    if len(fonts) > 1 and list(matplotlib.rcParams["font.family"]) in (["sans-serif"], [fonts[0][0]]):
        matplotlib.rcParams["font.family"] = [name for name, _ in fonts]  # a user's own choice is kept


def covered(text: str) -> bool:
    """Whether the fonts :func:`setup` uses have a glyph for every character of ``text``."""
    need = {ord(c) for c in text if not c.isspace()}
    for _, path in _fonts():
        need -= _charmap(path)
    return not need


def drawable(text: str) -> str:
    """``text`` unchanged when every glyph can be drawn, else transliterated (or escaped) to ASCII."""
    text = str(text)
    if text.isascii() or covered(text):
        return text
    try:
        from anyascii import anyascii
    except ImportError:
        return text.encode("ascii", "backslashreplace").decode("ascii")
    return "".join(anyascii(c) if not covered(c) else c for c in text)
