"""Hardened XML parsing, and a fast walk that collects the elements at known paths."""

from __future__ import annotations

import codecs
import functools
import re
from collections.abc import Iterable
from typing import Final

from lxml import etree

from gateway.model import BadInput, Reason

Path = tuple[str, ...]

# Hostile-input limits, in one place. libxml2 (without huge_tree) refuses nesting deeper than
# 256 and text over 10 MB; the message size limit (matching.max_message_bytes) bounds the rest.
# A single text node or tag (with its attributes) may hold at most this much: far above any
# real SF0741 field, and a bound on what one value can cost downstream.
MAX_NODE_BYTES: Final = 64 * 1024
_XML_DECLARED_ENCODING: Final = re.compile(
    rb"""\A(?:\xef\xbb\xbf)?\s*<\?xml[^>]*?\sencoding\s*=\s*["']([^"']{1,40})["']"""
)


@functools.lru_cache(maxsize=16)  # keyed by codec name: a handful in practice, bounded anyway
def _parser(encoding: str | None) -> etree.XMLParser:
    return etree.XMLParser(
        encoding=encoding,  # None: as the document declares (UTF-8 without a declaration)
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
        collect_ids=False,
    )


def parse_xml(data: bytes, encoding: str | None = None) -> etree._Element:
    """Hardened XML parse: refuses DTDs (and so every entity trick), oversized nodes, and a
    declared charset other than `encoding` (the charset a wrapper says the bytes are in)."""
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise BadInput(Reason.FORBIDDEN_DTD, "XML with a DTD or entity declarations is refused")
    if len(data) > MAX_NODE_BYTES:
        largest = max(map(len, data.split(b"<")))
        if largest > MAX_NODE_BYTES:
            raise BadInput(Reason.TOO_LARGE, f"a text or tag of {largest} bytes exceeds the "
                                             f"limit of {MAX_NODE_BYTES} for one node")
    _check_declaration(data, encoding)  # also refuses an unknown `encoding`
    try:
        root = etree.fromstring(data, _parser(encoding and codecs.lookup(encoding).name))
    except etree.XMLSyntaxError as exc:
        text = str(exc).lower()
        encoding_trouble = "encod" in text or "utf-8" in text or "labelled" in text
        reason = Reason.BAD_ENCODING if encoding_trouble else Reason.NOT_XML
        raise BadInput(reason, f"XML does not parse: {str(exc)[:120]}") from None
    except (ValueError, LookupError) as exc:  # e.g. an unsupported encoding declaration
        raise BadInput(Reason.BAD_ENCODING, f"XML does not parse: {str(exc)[:120]}") from None
    if root.getroottree().docinfo.doctype:  # type: ignore[union-attr]
        raise BadInput(Reason.FORBIDDEN_DTD, "XML with a DTD is refused")
    return root


def _check_declaration(data: bytes, wrapper: str | None) -> None:
    """Refuses a wrong charset declaration where it can be told: a payload whose XML
    declaration names another charset than its wrapper (one of them is wrong, and guessing
    which would garble names silently), and 8-bit text labelled Latin-1 that is UTF-8."""
    head = data[:120]
    found = _XML_DECLARED_ENCODING.match(head) if b"encoding" in head else None
    declared = found.group(1).decode("ascii", "replace") if found else None
    if wrapper is None and (declared is None or declared.lower() in ("utf-8", "utf8")):
        return  # UTF-8, checked by the parser
    try:
        names = {codecs.lookup(c).name for c in (declared, wrapper) if c is not None}
    except (LookupError, ValueError) as exc:  # ValueError: a NUL in the name
        raise BadInput(Reason.BAD_ENCODING, f"unknown charset: {str(exc)[:60]}") from None
    if len(names) > 1:
        raise BadInput(Reason.BAD_ENCODING, f"the payload declares {declared!r}, "
                                            f"its wrapper {wrapper!r}")
    name = names.pop()
    if found is not None and name.startswith(("utf-16", "utf-32")):
        # the declaration itself was read as single bytes: the document is not UTF-16/32
        raise BadInput(Reason.BAD_ENCODING, f"declares {declared!r}, but is 8-bit text")
    check_not_mislabelled_utf8(data, name)


LATIN_CHARSETS: Final = frozenset({"iso8859-1", "latin-1", "cp1252", "iso8859-15"})


def check_not_mislabelled_utf8(data: bytes, charset: str) -> None:
    """Bytes labelled Latin-1 (or cp1252) that are valid UTF-8 with non-ASCII in them are
    UTF-8: Danish text in Latin-1 ("på" = 70 e5) is never valid UTF-8 by chance."""
    if codecs.lookup(charset).name not in LATIN_CHARSETS or data.isascii():
        return
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return
    raise BadInput(Reason.BAD_ENCODING, f"labelled {charset[:40]!r}, but the bytes are UTF-8")


Texts = dict[Path, str | None]  # path -> stripped text of its first element (None: empty)


class Paths:
    """A set of element paths below a root, read in one pass in document order (much faster
    than a find() per path): the stripped text of the first element at each path found."""

    def __init__(self, paths: Iterable[Path]) -> None:
        self._tree: dict[str, _Step] = {}
        for path in paths:
            tree = self._tree
            for depth, tag in enumerate(path, start=1):
                step = tree.setdefault(tag, _Step())
                if depth == len(path):
                    step.path = path
                else:
                    step.below = step.below if step.below is not None else {}
                    tree = step.below

    def texts(self, root: etree._Element) -> Texts:
        found: Texts = {}
        _walk(root, self._tree, found)
        return found


class _Step:
    """One tag on the way down: the path it completes, if wanted, and the tags below it."""

    __slots__ = ("below", "path")

    def __init__(self) -> None:
        self.path: Path | None = None
        self.below: dict[str, _Step] | None = None


def _walk(element: etree._Element, tree: dict[str, _Step], found: Texts) -> None:
    for child in element:
        step = tree.get(child.tag)
        if step is None:
            continue
        if step.path is not None and step.path not in found:
            found[step.path] = (child.text or "").strip() or None
        if step.below is not None:
            _walk(child, step.below, found)
