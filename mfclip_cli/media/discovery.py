"""Input discovery: files, folders, globs and --from-file lists walked into media items (errors listed, never raised)."""

from __future__ import annotations

import errno
import glob
import os
import re
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from mfclip_cli.errors import MfclipError

from .sniff import MEDIA_EXTS, Kind, classify, kind_from_extension, sniff_file


@dataclass(frozen=True)
class InputItem:
    """One media file to process; ``path`` is spelled as the user gave it (or joined under a folder)."""

    path: str
    kind: Kind


@dataclass(frozen=True)
class InputError:
    """A path that could not become an item (missing, unreadable, not media, no media in a folder)."""

    path: str
    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "code": self.code, "message": self.message}


# --------------------------------------------------------------------------------------------- walking


def _walk_files(folder: str, visited: set[str], on_error, on_bad_link=None) -> Iterator[str]:
    """Files under ``folder``, depth first in sorted name order, skipping dot-files and dot-folders.

    Folder symlinks are followed, but each real folder is entered once (``visited``), so symlink loops
    end. ``on_error(path, exc)`` is called for folders that cannot be listed, ``on_bad_link(path, exc)``
    for symlinks that cannot be resolved (broken, or a loop of links).
    """
    real = os.path.realpath(folder)
    if real in visited:
        return
    visited.add(real)
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        on_error(folder, exc)
        return
    for entry in entries:
        if entry.name.startswith("."):  # hidden files, incl. macOS "._x.jpg" resource forks
            continue
        path = os.path.join(folder, entry.name)
        try:
            is_dir = entry.is_dir()  # follows symlinks; loops are cut by ``visited``
            is_file = not is_dir and entry.is_file()
        except OSError as exc:  # ELOOP: a loop of symlinks
            if on_bad_link is not None:
                on_bad_link(path, exc)
            continue
        if not is_dir and not is_file and entry.is_symlink() and on_bad_link is not None:
            try:
                os.stat(path)
            except OSError as exc:
                on_bad_link(path, exc)
                continue
        if is_dir:
            yield from _walk_files(path, visited, on_error, on_bad_link)
        elif is_file:  # broken symlinks, sockets, fifos are not media
            yield path


def _translate_glob(parts: list[str]) -> re.Pattern[str]:
    """Regex for a relative "/"-joined path matching glob components (``*``, ``?``, ``[..]``, ``**``)."""
    out = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:[^/]+/)*")
            continue
        j, n, comp = 0, len(part), []
        while j < n:
            c = part[j]
            if c == "*":
                comp.append("[^/]*")
            elif c == "?":
                comp.append("[^/]")
            elif c == "[":
                start = j + 1
                start += part[start : start + 1] == "!"
                start += part[start : start + 1] == "]"
                k = part.find("]", start)
                if k == -1:
                    comp.append(re.escape(c))
                else:
                    body = part[j + 1 : k]
                    body = "^" + body[1:] if body.startswith("!") else body
                    comp.append("[" + body.replace("\\", "\\\\") + "]")
                    j = k
            else:
                comp.append(re.escape(c))
            j += 1
        out.append("".join(comp) + ("" if last else "/"))
    return re.compile("".join(out) + r"\Z")


class _Collector:
    """Accumulates items and errors across arguments; dedups by resolved path and guards symlink loops."""

    def __init__(self, exclude: Iterable[str] = ()) -> None:
        self.items: list[InputItem] = []
        self.errors: list[InputError] = []
        self._seen_files: set[str] = set()
        self._exclude = {os.path.realpath(p) for p in exclude}

    def _add(self, path: str, kind: Kind) -> None:
        key = os.path.realpath(path)
        if key in self._seen_files:
            return
        self._seen_files.add(key)
        self.items.append(InputItem(path=path, kind=kind))

    def error(self, path: str, code: str, message: str) -> None:
        self.errors.append(InputError(path=path, code=code, message=message))

    def _folder_error(self, folder: str, exc: OSError) -> None:
        reason = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or str(exc))
        self.error(
            folder, "unreadable", f"{folder}: cannot list the folder ({reason}). Check its permissions."
        )

    def bad_link(self, path: str, exc: OSError) -> None:
        """A symlink under a folder that leads nowhere: an error item when it is a loop or has a media name."""
        if exc.errno == errno.ELOOP:
            self.error(path, "unreadable", f"{path}: symbolic link loop (the links point at each other). "
                                           f"Remove or fix the link.")
        elif kind_from_extension(path) is not None:
            self.error(path, "not_found", f"{path}: broken symbolic link (its target does not exist). "
                                          f"Restore the target or remove the link.")

    def add_named_file(self, path: str) -> None:
        """A file the user named: anything that is not media is reported, never skipped."""
        try:
            kind = classify(path)
        except OSError as exc:
            reason = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or exc)
            self.error(path, "unreadable", f"{path}: cannot be read ({reason}). Check its permissions.")
            return
        if kind is None:
            self.error(
                path,
                "not_media",
                f"{path}: not an image or video (unknown content and extension). "
                f"Supported: {', '.join(sorted(MEDIA_EXTS))}.",
            )
            return
        self._add(path, kind)

    def add_walked_file(self, path: str) -> bool:
        """A file found under a folder or by a pattern: non-media is skipped silently. True if media."""
        if self._exclude and os.path.realpath(path) in self._exclude and sniff_file(path) is None:
            return False  # this scan's own report file (e.g. from the previous run), not an input
        hinted = kind_from_extension(path)
        try:
            kind = classify(path)
        except OSError as exc:
            # Only complain about files that look like media; stray unreadable files are not our business.
            if hinted is not None:
                reason = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or exc)
                self.error(path, "unreadable", f"{path}: cannot be read ({reason}). Check its permissions.")
            return False
        if kind is None:
            return False
        self._add(path, kind)
        return True

    def _add_walk(self, folder: str, visited: set[str]) -> int:
        return sum(self.add_walked_file(p) for p in _walk_files(folder, visited, self._folder_error, self.bad_link))

    def add_folder(self, root: str) -> None:
        """Walk ``root`` recursively in sorted order; report it when it holds no media at all."""
        errors_before = len(self.errors)
        found = self._add_walk(root, visited=set())
        if found == 0 and len(self.errors) == errors_before:
            self.error(
                root,
                "no_media",
                f"{root}: folder holds no image or video files "
                f"(looked for {', '.join(sorted(MEDIA_EXTS))}, and by content).",
            )

    def add_argument(self, arg: str) -> None:
        if os.path.lexists(arg):
            try:
                st = os.stat(arg)
            except FileNotFoundError:
                self.error(arg, "not_found", f"{arg}: broken symbolic link (its target does not exist).")
                return
            except OSError as exc:
                self.error(arg, "unreadable", f"{arg}: cannot be accessed ({exc.strerror or exc}).")
                return
            if stat.S_ISDIR(st.st_mode):
                self.add_folder(arg)
            elif stat.S_ISREG(st.st_mode):
                self.add_named_file(arg)
            else:
                self.error(arg, "not_media", f"{arg}: not a regular file or folder.")
            return
        if glob.has_magic(arg):
            self.add_pattern(arg)
            return
        self.error(arg, "not_found", f"{arg}: no such file or folder (relative to {os.getcwd()}).")

    def add_pattern(self, pattern: str) -> None:
        """Files matching a glob pattern; ``**`` spans folders (walked safely, without glob's recursion)."""
        errors_before = len(self.errors)
        found = 0
        matched_any = False
        parts = pattern.replace(os.sep, "/").split("/")
        if "**" in parts:
            first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
            root = "/".join(parts[:first]) or ("/" if pattern.startswith("/") else "")
            regex = _translate_glob(parts[first:])
            for path in _walk_files(root or ".", set(), self._folder_error, self.bad_link):
                rel = os.path.relpath(path, root or ".").replace(os.sep, "/")
                if regex.match(rel):
                    matched_any = True
                    found += self.add_walked_file(os.path.join(root, rel) if root else rel)
        else:
            for match in sorted(glob.glob(pattern)):
                matched_any = True
                if os.path.isdir(match):
                    found += self._add_walk(match, set())
                elif os.path.isfile(match):
                    found += self.add_walked_file(match)
                elif os.path.islink(match):
                    try:
                        os.stat(match)
                    except OSError as exc:
                        self.bad_link(match, exc)
        if not matched_any:
            self.error(pattern, "not_found", f"{pattern}: the pattern matches no file or folder.")
        elif found == 0 and len(self.errors) == errors_before:
            self.error(pattern, "no_media", f"{pattern}: the pattern matches no image or video file.")


def _read_path_list(from_file: str) -> list[str]:
    """Paths from a list file (one per line) or from stdin when ``from_file`` is "-".

    Each line is stripped of surrounding whitespace; blank lines and lines starting with ``#`` are skipped
    (name a file that starts with "#" as ``./#name``).
    """
    if from_file == "-":
        text = sys.stdin.read()
    else:
        try:
            with open(from_file, encoding="utf-8") as fh:
                text = fh.read()
        except FileNotFoundError:
            raise MfclipError(
                f"Path list {from_file} does not exist. Pass a text file with one path per line."
            )
        except (OSError, UnicodeDecodeError) as exc:
            raise MfclipError(f"Path list {from_file} cannot be read as UTF-8 text: {exc}.") from exc
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def collect_inputs(
    paths: Iterable[str], from_file: str | None = None, exclude: Iterable[str] = ()
) -> tuple[list[InputItem], list[InputError]]:
    """Items for every media file named by ``paths`` (files, folders, glob patterns) and the list file.

    Folders are walked recursively in sorted name order; results keep the argument order and are
    deduplicated by resolved path (the first spelling wins). Files inside folders or matched by a pattern
    that are not media are skipped; a file named explicitly that is not media is an ``InputError``.
    Files found in folders or by patterns that are ``exclude``d (the scan's report targets) are skipped
    unless their content is media (then the caller refuses to overwrite them).
    Raises MfclipError when ``from_file`` itself cannot be read.
    """
    args = [os.fspath(p) for p in paths]
    if from_file is not None:
        args.extend(_read_path_list(from_file))
    collector = _Collector(exclude)
    for arg in args:
        collector.add_argument(arg)
    return collector.items, collector.errors


def shard(items: list[InputItem], k: int, n: int) -> list[InputItem]:
    """The ``k``-th (1-based) of ``n`` interleaved shares of the items sorted by path.

    Shares are disjoint, cover every item and do not depend on the input order.
    """
    if isinstance(k, bool) or isinstance(n, bool) or not isinstance(k, int) or not isinstance(n, int):
        raise TypeError(f"shard needs integers k and n, got k={k!r}, n={n!r}")
    if n < 1 or not 1 <= k <= n:
        raise ValueError(f"shard k/n must satisfy 1 <= k <= n, got {k}/{n} (e.g. --shard 2/4)")
    ordered = sorted(items, key=lambda it: (it.path, it.kind))
    return [it for i, it in enumerate(ordered) if i % n == k - 1]
