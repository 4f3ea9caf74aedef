"""The payload formats, one module per version; this maps Beskedtype UUIDs to them."""

from __future__ import annotations

from typing import Final

from gateway.formats import v22, v30
from gateway.model import Version

DEFAULT_BESKEDTYPES: Final[dict[str, Version]] = {
    v22.BESKEDTYPE_UUID: Version.V2_2,
    v30.BESKEDTYPE_UUID: Version.V3_0,
}

DEFAULT_CHARSETS: Final[dict[Version, str]] = {
    Version.V2_2: v22.DEFAULT_CHARSET,
    Version.V3_0: v30.DEFAULT_CHARSET,
}
