"""What a file says about its own origin: its C2PA manifest and the metadata generators write.

Read beside the pixels and never fed to the model: the pixel score stays the verdict, this is what the file
*claims*. A file can claim anything (metadata is easily stripped or forged; only a C2PA signature ties a claim
to a signer), and a file that claims nothing proves nothing.

C2PA manifests are read and validated by the C2PA reference library (``c2pa-python``); EXIF and the PNG/JPEG
text chunks by Pillow; XMP packets are parsed with ``defusedxml``. :func:`read_provenance` never raises.
The claims' types and the status rule are in ``provenance_claims``.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from .provenance_claims import C2paInfo, GeneratorHint, Provenance, excerpt, name_generator, status_of

# PNG text chunks (and JPEG COM / PIL info keys) that generators write, by the tool known to write them.
GENERATOR_TEXT_KEYS: Mapping[str, str] = {
    "parameters": "AUTOMATIC1111 Stable Diffusion web UI (or a compatible UI: Forge, SD.Next, Fooocus)",
    "Dream": "InvokeAI",
    "sd-metadata": "InvokeAI",
    "invokeai_metadata": "InvokeAI",
    "invokeai_graph": "InvokeAI",
    "workflow": "ComfyUI",
    "fooocus_scheme": "Fooocus",
}
COMFYUI_PROMPT_KEY = "prompt"  # ComfyUI's node graph; others write plain text there, so the value is checked
A1111_PARAMETERS = re.compile(r"\bSteps: \d+, Sampler: ")  # the settings line of AUTOMATIC1111 "parameters"

XMP_NS = {
    "iptc_ext": "http://iptc.org/std/Iptc4xmpExt/2008-02-29/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
}
EXIF_SOFTWARE = 0x0131
EXIF_IMAGE_DESCRIPTION = 0x010E
EXIF_IFD = 0x8769
EXIF_USER_COMMENT = 0x9286
TIFF_XMP_TAG = 700


# --- C2PA -----------------------------------------------------------------------------------------------

_context_lock = threading.Lock()
_context: Any = None


def _c2pa_context() -> Any:
    """One shared reader context, made on first use: never fetch remote manifests or OCSP answers (a scan
    must not tell a server which files it reads, nor wait on the network)."""
    global _context
    with _context_lock:
        if _context is None:
            import c2pa

            offline = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
            _context = c2pa.Context.from_dict(offline)
        return _context


def read_c2pa(stream: BinaryIO) -> C2paInfo:
    """The C2PA manifest store embedded in ``stream`` (format detected from the bytes), validated.

    No manifest, or a format C2PA does not cover → ``present`` False. A manifest the library cannot read →
    ``present`` True with its message in ``error``.
    """
    import c2pa

    try:
        reader = c2pa.Reader.try_create(None, stream, None, _c2pa_context())
    except c2pa.C2paError.NotSupported:
        return C2paInfo()
    except c2pa.C2paError as exc:
        return C2paInfo(present=True, error=str(exc) or type(exc).__name__)
    if reader is None:
        return C2paInfo()
    with reader:
        store = json.loads(reader.json())
    return c2pa_info_from_store(store)


def c2pa_info_from_store(store: Mapping[str, Any]) -> C2paInfo:
    """A :class:`C2paInfo` from the library's manifest-store JSON (``Reader.json()``)."""
    manifests: Mapping[str, Any] = store.get("manifests") or {}
    active = manifests.get(store.get("active_manifest") or "", {})
    actions = list(_actions(active))
    created = [a for a in actions
               if a.get("action") in ("c2pa.created", "c2pa.opened") and a.get("digitalSourceType")]
    active_types = [a["digitalSourceType"] for a in created] + list(_source_types(active))
    signature = active.get("signature_info") or {}
    return C2paInfo(
        present=True,
        claim_generator=_claim_generator(active),
        actions=tuple(str(a.get("action")) for a in actions if a.get("action")),
        digital_source_type=active_types[0] if active_types else None,
        validation_state=store.get("validation_state"),
        validation_codes=tuple(str(s["code"]) for s in store.get("validation_status") or () if s.get("code")),
        signer=signature.get("common_name"),
        issuer=signature.get("issuer"),
        source_types=tuple(dict.fromkeys(t for m in manifests.values() for t in _source_types(m))),
    )


def _actions(manifest: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for assertion in manifest.get("assertions") or ():
        if str(assertion.get("label", "")).startswith("c2pa.actions"):
            actions = (assertion.get("data") or {}).get("actions") or ()
            yield from (a for a in actions if isinstance(a, Mapping))


def _source_types(manifest: Mapping[str, Any]) -> Iterator[str]:
    """Every digital source type a manifest states: on its actions and in IPTC assertions."""
    for action in _actions(manifest):
        if action.get("digitalSourceType"):
            yield str(action["digitalSourceType"])
    for assertion in manifest.get("assertions") or ():
        if str(assertion.get("label", "")).startswith("stds.iptc"):
            yield from _values_of_key(assertion.get("data"), "DigitalSourceType")


def _values_of_key(obj: Any, suffix: str) -> Iterator[str]:
    """String values of every key ending in ``suffix`` (JSON-LD keys carry a namespace prefix)."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if str(k).endswith(suffix) and isinstance(v, str):
                yield v
            else:
                yield from _values_of_key(v, suffix)
    elif isinstance(obj, list):
        for v in obj:
            yield from _values_of_key(v, suffix)


def _claim_generator(manifest: Mapping[str, Any]) -> str | None:
    infos = manifest.get("claim_generator_info") or ()
    if infos and isinstance(infos[0], Mapping) and infos[0].get("name"):
        info = infos[0]
        return f"{info['name']} {info['version']}" if info.get("version") else str(info["name"])
    return manifest.get("claim_generator")


def c2pa_hints(info: C2paInfo) -> list[GeneratorHint]:
    """Hints from a manifest's claim generator when it names a generator (old manifests say no more)."""
    tool = name_generator(info.claim_generator) if info.claim_generator else None
    return [GeneratorHint("c2pa:claim_generator", excerpt(info.claim_generator), tool)] if tool else []


# --- embedded metadata (Pillow) ------------------------------------------------------------------------


def hints_from_text_chunks(info: Mapping[str, Any]) -> list[GeneratorHint]:
    """Hints from PNG text chunks (``Image.info``): keys generators write, and text that names one."""
    hints = []
    for key, value in info.items():
        if not isinstance(key, str) or not isinstance(value, (str, bytes)):
            continue
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        tool = GENERATOR_TEXT_KEYS.get(key)
        if tool is None and key == COMFYUI_PROMPT_KEY and _is_comfyui_graph(text):
            tool = "ComfyUI"
        if tool is None and key in ("Software", "Comment", "Description", "Source", "comment"):
            tool = name_generator(text) or (GENERATOR_TEXT_KEYS["parameters"] if A1111_PARAMETERS.search(text)
                                            else None)
        if tool is not None:
            where = "jpeg:COM" if key == "comment" else f"png:{key}"
            hints.append(GeneratorHint(where, excerpt(text), tool))
    return hints


def _is_comfyui_graph(text: str) -> bool:
    try:
        graph = json.loads(text)
    except ValueError:
        return False
    return isinstance(graph, dict) and any(isinstance(n, dict) and "class_type" in n for n in graph.values())


def hints_from_exif(exif: Mapping[int, Any], exif_ifd: Mapping[int, Any]) -> list[GeneratorHint]:
    """Hints from EXIF: ``Software`` naming a generator, generator settings in ``UserComment`` or
    ``ImageDescription`` (AUTOMATIC1111 writes its "parameters" there in JPEG and WebP)."""
    hints = []
    fields = (("exif:Software", exif.get(EXIF_SOFTWARE)),
              ("exif:ImageDescription", exif.get(EXIF_IMAGE_DESCRIPTION)),
              ("exif:UserComment", exif_ifd.get(EXIF_USER_COMMENT)))  # fmt: skip
    for name, raw in fields:
        text = decode_user_comment(raw) if name == "exif:UserComment" else raw
        if not isinstance(text, str) or not text.strip():
            continue
        tool = name_generator(text)
        if tool is None and name != "exif:Software" and A1111_PARAMETERS.search(text):
            tool = GENERATOR_TEXT_KEYS["parameters"]
        if tool is not None:
            hints.append(GeneratorHint(name, excerpt(text), tool))
    return hints


def decode_user_comment(raw: Any) -> str | None:
    """EXIF UserComment as text: 8 bytes name the character code (ASCII, UNICODE = UTF-16, or undefined)."""
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, bytes) or len(raw) < 8:
        return None
    code, body = raw[:8].rstrip(b"\0 ").upper(), raw[8:]
    if code == b"UNICODE":
        # the standard leaves the byte order open; writers (piexif, exiftool) use big-endian unless marked
        little = body[:2] == b"\xff\xfe" or (len(body) > 1 and body[0] and not body[1])
        order = "utf-16-le" if little else "utf-16-be"
        return body.decode(order, "replace").lstrip("\ufeff").rstrip("\0")
    return body.decode("utf-8", "replace").rstrip("\0")


def xmp_packet(image: Any) -> bytes | str | None:
    """The raw XMP packet Pillow found in a JPEG (APP1), PNG (iTXt), WebP or TIFF file, if any."""
    packet = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")
    if packet is None and hasattr(image, "tag_v2"):
        packet = image.tag_v2.get(TIFF_XMP_TAG)
    return packet or None


def read_xmp(packet: bytes | str) -> tuple[str | None, list[GeneratorHint]]:
    """(IPTC DigitalSourceType, hints from CreatorTool) of an XMP packet; ValueError when it is not XML."""
    from xml.etree.ElementTree import ParseError

    from defusedxml import ElementTree

    data = packet.encode("utf-8") if isinstance(packet, str) else packet
    try:
        root = ElementTree.fromstring(data.strip(b"\0 \r\n\t"))
    except ParseError as exc:
        raise ValueError(f"XMP packet is not well-formed XML: {exc}") from None
    source_type = next(_xmp_values(root, XMP_NS["iptc_ext"], "DigitalSourceType"), None)
    hints = []
    for tool_text in _xmp_values(root, XMP_NS["xmp"], "CreatorTool"):
        tool = name_generator(tool_text)
        if tool is not None:
            hints.append(GeneratorHint("xmp:CreatorTool", excerpt(tool_text), tool))
    return source_type, hints


def _xmp_values(root: Any, ns: str, name: str) -> Iterator[str]:
    """Values of an XMP property, written as an attribute, as element text, or as an rdf:resource."""
    qname = f"{{{ns}}}{name}"
    for elem in root.iter():
        if qname in elem.attrib:
            yield elem.attrib[qname].strip()
        if elem.tag == qname:
            resource = elem.attrib.get(f"{{{XMP_NS['rdf']}}}resource")
            text = resource or "".join(elem.itertext())
            if text.strip():
                yield text.strip()


@dataclass(frozen=True)
class _Embedded:
    xmp_source_type: str | None = None
    hints: tuple[GeneratorHint, ...] = ()
    error: str | None = None


def read_embedded(stream: BinaryIO) -> _Embedded:
    """XMP source type and generator hints from an image's own metadata (Pillow reads headers, not pixels)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(stream) as image:
            hints = hints_from_text_chunks(image.info)
            # Pillow decodes a whole PNG to look for an eXIf chunk after the pixels: read only one before them
            if image.format != "PNG" or "exif" in image.info:
                exif = image.getexif()
                hints += hints_from_exif(exif, exif.get_ifd(EXIF_IFD))
            packet = xmp_packet(image)
    except UnidentifiedImageError:
        return _Embedded()  # a format Pillow does not read (pixels come from OpenCV): nothing to report
    source_type, errors = None, None
    if packet is not None:
        try:
            source_type, xmp_hints = read_xmp(packet)
            hints += xmp_hints
        except ValueError as exc:
            errors = str(exc)
    return _Embedded(source_type, tuple(hints), errors)


# --- the entry point -------------------------------------------------------------------------------------


def read_provenance(path: str, kind: str = "image") -> Provenance:
    """What the file at ``path`` claims about its origin. Never raises: a file or manifest that cannot
    be read gives ``status`` "unreadable" (unless other metadata makes a claim), the reason in ``message``."""
    try:
        with open(path, "rb") as fh:
            info = read_c2pa(fh)
            embedded = _Embedded()
            if kind == "image":
                fh.seek(0)
                embedded = read_embedded(fh)
    except Exception as exc:  # noqa: BLE001 - reading metadata must never fail a scan
        return Provenance(status="unreadable", message=f"{type(exc).__name__}: {exc}")
    hints = c2pa_hints(info) + list(embedded.hints)
    message = "; ".join(m for m in (info.error, embedded.error) if m) or None
    status = status_of(info, embedded.xmp_source_type, hints)
    if status == "none" and embedded.error is not None:
        status = "unreadable"
    return Provenance(status=status, c2pa=info, xmp_digital_source_type=embedded.xmp_source_type,
                      generator_hints=tuple(hints), message=message)
