"""Byte-level repairs of HEIF and AVIF files (ISO-BMFF boxes) that let their decoders read a photo
whose pixels are fine but whose metadata items would crash or stop them; see :mod:`.images`."""

from __future__ import annotations

import struct


def _boxes(data: bytes, start: int, end: int):
    """(type, payload start, end) of each ISO-BMFF box (HEIF, AVIF) in ``data[start:end]``."""
    while start + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, start)
        head = 8
        if size == 1 and start + 16 <= end:
            size, head = struct.unpack_from(">Q", data, start + 8)[0], 16
        elif size == 0:
            size = end - start
        if size < head or start + size > end:
            return
        yield kind, start + head, start + size
        start += size


def _heif_item_types(data: bytes):
    """(offset of the item type, offset of the text after it, end) of each item ('infe' box, version 2
    or 3) that a HEIF/AVIF file's 'meta' box lists."""
    for kind, meta, meta_end in _boxes(data, 0, len(data)):
        if kind != b"meta":
            continue
        for kind, start, end in _boxes(data, meta + 4, meta_end):  # a "full box": 4 bytes of version, flags
            if kind != b"iinf" or start + 4 > end:
                continue
            first = start + 4 + (2 if data[start] == 0 else 4)  # version, flags, entry count
            for kind, at, stop in _boxes(data, first, end):
                version = data[at] if at < stop else 0
                if kind == b"infe" and version in (2, 3):
                    typ = at + 4 + (2 if version == 2 else 4) + 2  # version/flags, item id, protection index
                    if typ + 4 <= stop:
                        yield typ, typ + 4, stop


def heif_retyped(data: bytes, old: bytes, new: bytes) -> bytes | None:
    """``data`` with each item of type ``old`` given type ``new`` (so decoders pass it over); None
    when there is none."""
    out = bytearray(data)
    for typ, _, _ in _heif_item_types(data):
        if data[typ:typ + 4] == old:
            out[typ:typ + 4] = new
    return bytes(out) if out != data else None


def heif_types_as_text(data: bytes) -> bytes:
    """``data`` with its HEIF items' type and content type made valid UTF-8 where they are not.

    pi-heif turns the type of each metadata item (Exif, XMP) into text without checking the result,
    and a byte that is not UTF-8 there (one flipped bit in an iPhone photo's "Exif") crashed Python
    itself (a segmentation fault): no error to catch, and a scan lost every file with it. Such an item
    is of no known type: as '?'s it is still none, and the picture is decoded."""
    if data[4:8] != b"ftyp":
        return data
    out = None
    for typ, text, end in _heif_item_types(data):
        fields = [(typ, typ + 4)]
        if data[typ:typ + 4] == b"mime":  # item name, then content type: text ending in a 0 byte
            name_end = data.find(b"\0", text, end)
            if name_end >= 0:
                stop = data.find(b"\0", name_end + 1, end)
                fields.append((name_end + 1, stop if stop >= 0 else end))
        for a, b in fields:
            field = bytes(data[a:b].split(b"\0", 1)[0])
            try:
                field.decode("utf-8")
            except UnicodeDecodeError:
                out = out if out is not None else bytearray(data)
                out[a:a + len(field)] = bytes(c if c < 0x80 else 0x3F for c in field)
    return bytes(out) if out is not None else data
