"""Hardened XML parsing, and a fast walk that collects the elements at known paths."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from lxml import etree

from gateway.model import BadInput, Reason

Path = tuple[str, ...]

_PARSER: Final = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    dtd_validation=False,
    huge_tree=False,
    remove_comments=True,
    remove_pis=True,
    collect_ids=False,
)


def parse_xml(data: bytes) -> etree._Element:
    """Hardened XML parse: refuses DTDs (and so every entity trick).

    Without huge_tree, libxml2 also refuses nesting deeper than 256 and text nodes over 10 MB.
    """
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise BadInput(Reason.FORBIDDEN_DTD, "XML with a DTD or entity declarations is refused")
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        reason = Reason.BAD_ENCODING if "encod" in str(exc).lower() else Reason.NOT_XML
        raise BadInput(reason, f"XML does not parse: {str(exc)[:120]}") from None
    except ValueError as exc:  # e.g. an unsupported encoding declaration
        raise BadInput(Reason.BAD_ENCODING, f"XML does not parse: {str(exc)[:120]}") from None
    if root.getroottree().docinfo.doctype:  # type: ignore[union-attr]
        raise BadInput(Reason.FORBIDDEN_DTD, "XML with a DTD is refused")
    return root


class Paths:
    """A set of element paths below a root, walked in one pass (much faster than find())."""

    def __init__(self, paths: Iterable[Path]) -> None:
        self.wanted = frozenset(paths)
        self.prefixes = frozenset(p[:i] for p in self.wanted for i in range(1, len(p)))

    def collect(self, root: etree._Element) -> dict[Path, list[etree._Element]]:
        found: dict[Path, list[etree._Element]] = {}
        stack: list[tuple[etree._Element, Path]] = [(root, ())]
        wanted, prefixes = self.wanted, self.prefixes
        while stack:
            element, path = stack.pop()
            for child in element:
                child_path = (*path, child.tag)
                if child_path in wanted:
                    found.setdefault(child_path, []).append(child)
                if child_path in prefixes:
                    stack.append((child, child_path))
        return found


def text_of(found: dict[Path, list[etree._Element]], path: Path) -> str | None:
    """The stripped text of the first element at `path`; None when absent or empty."""
    elements = found.get(path)
    if not elements:
        return None
    return (elements[0].text or "").strip() or None
