"""Safe output paths for the evaluation commands: never write over an input, never outside the chosen
folder, never over a file cocu did not write (unless forced).

PNGs cocu writes (saved predictions, overlays, label maps) carry a text chunk ``Software: cocu``, and a
JSON score file holds ``model`` and ``protocol``: that is how an existing file is recognised as cocu's
own, which may be replaced.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from PIL import Image, PngImagePlugin, UnidentifiedImageError

PNG_SOFTWARE = "cocu"


class OutputPathError(ValueError):
    """An output path that would overwrite an input, leave its folder or replace a foreign file."""


def png_info() -> PngImagePlugin.PngInfo:
    """The text chunk that marks a PNG as written by cocu (pass as ``pnginfo=`` to ``Image.save``)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", PNG_SOFTWARE)
    return info


def written_by_cocu(path: Path) -> bool:
    """Whether an existing file is one cocu wrote: a PNG with its marker or a cocu score JSON."""
    if path.suffix.lower() == ".json":
        try:
            raw = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(raw, dict) and "model" in raw and "protocol" in raw
    try:
        with Image.open(path) as img:
            return img.format == "PNG" and getattr(img, "text", {}).get("Software") == PNG_SOFTWARE
    except (OSError, UnidentifiedImageError):
        return False


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_not_input(
    out: str | Path, input_files: Iterable[str | Path] = (), input_dirs: Iterable[str | Path] = ()
) -> Path:
    """``out`` resolved; an error if it is one of ``input_files`` or lies in (or is) one of ``input_dirs``."""
    resolved = Path(out).resolve()
    for f in input_files:
        if resolved == Path(f).resolve():
            raise OutputPathError(f"{out}: output path is an input file; choose another output path")
    for d in input_dirs:
        folder = Path(d).resolve()
        if _inside(resolved, folder):
            raise OutputPathError(f"{out}: output path lies inside the input folder {d}; choose a folder outside it")
    return resolved


def check_overwrite(path: str | Path, force: bool = False) -> None:
    """An error if ``path`` exists and is not a file cocu wrote, unless ``force``."""
    p = Path(path)
    if force or not (p.exists() or p.is_symlink()):
        return
    if p.is_dir():
        raise OutputPathError(f"{p}: a folder is in the way of an output file")
    if not written_by_cocu(p):
        raise OutputPathError(f"{p}: exists and was not written by cocu; not overwriting it (--force to replace it)")


def contained_path(folder: str | Path, relative: str) -> Path:
    """``folder / relative`` resolved; an error if it leaves ``folder`` (``..`` parts, absolute names,
    links pointing elsewhere)."""
    base = Path(folder).resolve()
    target = (base / relative).resolve()
    if not _inside(target, base) or target == base:
        raise OutputPathError(f"{relative!r}: output path leaves the output folder {folder}; refusing to write it")
    return target
