"""What a file's origin claims mean: the IPTC source types, the known generators, the result types and the status rule (the readers are in ``provenance``)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

STATUSES = ("none", "claims_generated", "claims_captured", "invalid_signature", "unreadable")

# IPTC NewsCodes digital source types (http://cv.iptc.org/newscodes/digitalsourcetype/<term>), by claim.
GENERATED_SOURCE_TYPES = frozenset({
    "trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia", "algorithmicMedia",
    "compositeSynthetic",
})  # fmt: skip
CAPTURED_SOURCE_TYPES = frozenset({
    "digitalCapture", "computationalCapture", "negativeFilm", "positiveFilm", "compositeCapture",
})  # fmt: skip

# Tools whose name in a free-text field (EXIF Software, XMP CreatorTool, a C2PA claim generator) means the
# file says a generator made it. Words, not substrings: "Adobe Photoshop" is not a generator, "Firefly" is.
KNOWN_GENERATORS: tuple[tuple[str, str], ...] = (
    ("Adobe Firefly", r"\bfirefly\b"),
    ("DALL-E", r"\bdall[\s·\-]?e\b"),
    ("ChatGPT / OpenAI image generation", r"\bchatgpt\b|\bopenai\b|\bgpt-image\b|\bsora\b"),
    ("Midjourney", r"\bmidjourney\b"),
    ("Stable Diffusion", r"\bstable[\s\-]?diffusion\b|\bdreamstudio\b"),
    ("AUTOMATIC1111 Stable Diffusion web UI", r"\bautomatic1111\b"),
    ("ComfyUI", r"\bcomfyui\b"),
    ("InvokeAI", r"\binvoke\s?ai\b"),
    ("Fooocus", r"\bfooocus\b"),
    ("NovelAI", r"\bnovel\s?ai\b"),
    ("Google Imagen", r"\bimagen\b"),
    ("Google Gemini", r"\bgemini\b"),
    ("Microsoft Designer / Bing Image Creator", r"\bmicrosoft designer\b|\bbing image creator\b"),
    ("Leonardo.Ai", r"\bleonardo\.?ai\b"),
    ("FLUX", r"\bflux(\.1)?\b"),
    ("Ideogram", r"\bideogram\b"),
    ("Runway", r"\brunwayml\b|\brunway gen"),
    ("Playground AI", r"\bplayground\s?ai\b"),
)
_GENERATOR_PATTERNS = tuple((name, re.compile(rx, re.IGNORECASE)) for name, rx in KNOWN_GENERATORS)

VALUE_EXCERPT_CHARS = 160  # hints quote the field, not the whole prompt or node graph


@dataclass(frozen=True)
class C2paInfo:
    """The active C2PA manifest as the reference library reads and validates it (``present`` False: none)."""

    present: bool = False
    claim_generator: str | None = None
    actions: tuple[str, ...] = ()
    digital_source_type: str | None = None  # IPTC term as written (usually the full URL)
    validation_state: str | None = None  # the library's: "Invalid", "Valid" (signature matches) or "Trusted"
    validation_codes: tuple[str, ...] = ()  # the library's failure codes, e.g. "signingCredential.untrusted"
    signer: str | None = None  # common name of the signing certificate
    issuer: str | None = None  # organisation that issued it
    error: str | None = None  # the library's message when a manifest could not be read
    source_types: tuple[str, ...] = field(default=(), repr=False)  # every source type in the store (status)

    def to_json(self) -> dict[str, Any]:
        return {
            "present": self.present,
            "claim_generator": self.claim_generator,
            "actions": list(self.actions),
            "digital_source_type": self.digital_source_type,
            "validation_state": self.validation_state,
            "validation_codes": list(self.validation_codes),
            "signer": self.signer,
            "issuer": self.issuer,
            "error": self.error,
        }


@dataclass(frozen=True)
class GeneratorHint:
    """One metadata field that names a generator: where it was found, what it says, and the tool it names."""

    field: str  # e.g. "png:parameters", "exif:Software", "xmp:CreatorTool", "c2pa:claim_generator"
    value: str  # an excerpt of the field
    tool: str

    def to_json(self) -> dict[str, str]:
        return {"field": self.field, "value": self.value, "tool": self.tool}


@dataclass(frozen=True)
class Provenance:
    """What one file claims about its origin, and the status those claims add up to (:func:`status_of`)."""

    status: str
    c2pa: C2paInfo = field(default_factory=C2paInfo)
    xmp_digital_source_type: str | None = None  # IPTC DigitalSourceType from XMP (unsigned)
    generator_hints: tuple[GeneratorHint, ...] = ()
    message: str | None = None  # why something could not be read (the library's words)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"provenance status must be one of {STATUSES}, got {self.status!r}")

    @property
    def generator(self) -> str | None:
        """The tool the file names as its maker, if any (first hint, else the C2PA claim generator)."""
        if self.generator_hints:
            return self.generator_hints[0].tool
        return self.c2pa.claim_generator if self.status == "claims_generated" else None

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "message": self.message,
            "c2pa": self.c2pa.to_json(),
            "xmp_digital_source_type": self.xmp_digital_source_type,
            "generator_hints": [h.to_json() for h in self.generator_hints],
        }


# --- status ---------------------------------------------------------------------------------------------


def source_type_term(value: str) -> str:
    """The IPTC term of a digital source type written as a URL or a bare term (".../digitalCapture")."""
    return value.rstrip("/").rsplit("/", 1)[-1].strip()


def status_of(c2pa: C2paInfo, xmp_source_type: str | None, hints: Sequence[GeneratorHint]) -> str:
    """The provenance status, by the first rule that applies:

    a manifest whose validation fails → invalid_signature; any claim of generation (C2PA or XMP source
    type, a field naming a generator) → claims_generated; a capture source type → claims_captured; a
    manifest that could not be read → unreadable; else none.
    """
    if c2pa.validation_state is not None and c2pa.validation_state.lower() == "invalid":
        return "invalid_signature"
    c2pa_terms = {source_type_term(t) for t in c2pa.source_types}
    xmp_term = source_type_term(xmp_source_type) if xmp_source_type else None
    if c2pa_terms & GENERATED_SOURCE_TYPES or xmp_term in GENERATED_SOURCE_TYPES or hints:
        return "claims_generated"
    if c2pa_terms & CAPTURED_SOURCE_TYPES or xmp_term in CAPTURED_SOURCE_TYPES:
        return "claims_captured"
    if c2pa.error is not None:
        return "unreadable"
    return "none"


def name_generator(text: str) -> str | None:
    """The known generator a free-text field names, or None."""
    return next((name for name, rx in _GENERATOR_PATTERNS if rx.search(text)), None)


def excerpt(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    text = " ".join(text.split())
    return text if len(text) <= VALUE_EXCERPT_CHARS else text[: VALUE_EXCERPT_CHARS - 1] + "…"
