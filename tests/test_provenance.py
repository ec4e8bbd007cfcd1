"""Provenance: what files claim about their origin (C2PA, XMP, EXIF, PNG chunks), reported beside the pixels.

Every file is made here: PNGs with generator text chunks, JPEGs with XMP or EXIF, JPEGs signed with a C2PA
manifest by a certificate chain generated for the session (then tampered with), and a plain photo.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import struct
from pathlib import Path

import c2pa
import jsonschema
import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from rich.console import Console

from mfclip_cli import provenance as P
from mfclip_cli import report as R

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
A1111_PARAMETERS = ("portrait photo of a man, 35mm\nNegative prompt: blurry\n"
                    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x512, Model: v1-5-pruned")  # fmt: skip
COMFY_PROMPT = json.dumps({"3": {"class_type": "KSampler", "inputs": {"seed": 1}},
                           "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15"}}})  # fmt: skip
COMFY_WORKFLOW = json.dumps({"last_node_id": 9, "nodes": [{"id": 3, "type": "KSampler"}]})


def xmp_packet(source_type: str | None = None, creator_tool: str | None = None) -> bytes:
    """An XMP packet as Photoshop/exiftool write it (properties as attributes of rdf:Description)."""
    attrs = "".join([f' Iptc4xmpExt:DigitalSourceType="{source_type}"' if source_type else "",
                     f' xmp:CreatorTool="{creator_tool}"' if creator_tool else ""])  # fmt: skip
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"'
        f' xmlns:xmp="http://ns.adobe.com/xap/1.0/"{attrs}/>'
        '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    ).encode()


def inject_xmp_app1(jpeg: bytes, packet: bytes) -> bytes:
    """``jpeg`` with an XMP APP1 segment inserted after SOI: every other byte (all the pixels) unchanged."""
    payload = b"http://ns.adobe.com/xap/1.0/\x00" + packet
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def noise_rgb(seed: int = 0, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def jpeg_bytes(rgb: np.ndarray, **save: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90, **save)
    return buf.getvalue()


def png_bytes(rgb: np.ndarray, chunks: dict[str, str] | None = None) -> bytes:
    info = PngInfo()
    for k, v in (chunks or {}).items():
        info.add_text(k, v)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def read_bytes(tmp_path: Path, data: bytes, name: str, kind: str = "image") -> P.Provenance:
    path = tmp_path / name
    path.write_bytes(data)
    return P.read_provenance(str(path), kind)


# ------------------------------------------------------------------------------------- a test signer


@pytest.fixture(scope="session")
def c2pa_test_signer() -> c2pa.Signer:
    """A C2PA ES256 signer: a throw-away CA and a leaf certificate it issued (digitalSignature, emailProtection),
    generated for this session. No trust list knows the CA, so its manifests validate as untrusted."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mfclip tests")])  # fmt: skip

    def usage(**on: bool) -> x509.KeyUsage:
        keys = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")  # fmt: skip
        return x509.KeyUsage(**{k: on.get(k, False) for k in keys})

    now = dt.datetime.now(dt.UTC)
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def cert(subject: str, key, issuer: x509.Name, *extensions) -> x509.Certificate:
        b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(issuer).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
             .not_valid_after(now + dt.timedelta(days=30)))  # fmt: skip
        for ext, critical in extensions:
            b = b.add_extension(ext, critical=critical)
        return b.sign(ca_key, hashes.SHA256())

    ca = cert("mfclip test CA", ca_key, name("mfclip test CA"),
              (x509.BasicConstraints(ca=True, path_length=0), True), (usage(key_cert_sign=True, crl_sign=True), True),
              (x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False))  # fmt: skip
    leaf = cert("mfclip test signer", leaf_key, ca.subject,
                (x509.BasicConstraints(ca=False, path_length=None), True), (usage(digital_signature=True), True),
                (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False),
                (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False))  # fmt: skip
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, ca))
    key = leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())  # fmt: skip
    return c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, chain, key, None))


def c2pa_sign(signer: c2pa.Signer, asset: bytes, mime: str, source_type: str,
              claim_generator: str = "mfclip-test-camera") -> bytes:
    """``asset`` with an embedded manifest: one c2pa.created action of IPTC ``source_type``."""
    manifest = {
        "claim_generator_info": [{"name": claim_generator, "version": "1.0"}],
        "title": "test asset",
        "assertions": [{"label": "c2pa.actions",
                        "data": {"actions": [{"action": "c2pa.created", "digitalSourceType": IPTC + source_type}]}}],
    }  # fmt: skip
    out = io.BytesIO()
    with c2pa.Builder(manifest) as builder:
        builder.sign(signer, mime, io.BytesIO(asset), out)
    return out.getvalue()


@pytest.fixture(scope="session")
def signed_capture_jpeg(c2pa_test_signer) -> bytes:
    return c2pa_sign(c2pa_test_signer, jpeg_bytes(noise_rgb(1)), "image/jpeg", "digitalCapture")


# ------------------------------------------------------------------------------ what each file claims


def test_automatic1111_parameters_chunk_claims_generated(tmp_path):
    p = read_bytes(tmp_path, png_bytes(noise_rgb(), {"parameters": A1111_PARAMETERS}), "a1111.png")
    assert p.status == "claims_generated"
    assert [h.field for h in p.generator_hints] == ["png:parameters"]
    assert "AUTOMATIC1111" in p.generator_hints[0].tool and p.generator == p.generator_hints[0].tool
    assert p.generator_hints[0].value.startswith("portrait photo of a man")
    assert not p.c2pa.present


def test_comfyui_prompt_and_workflow_chunks_claim_generated(tmp_path):
    p = read_bytes(tmp_path, png_bytes(noise_rgb(), {"prompt": COMFY_PROMPT, "workflow": COMFY_WORKFLOW}), "c.png")
    assert p.status == "claims_generated"
    assert {(h.field, h.tool) for h in p.generator_hints} == {("png:prompt", "ComfyUI"), ("png:workflow", "ComfyUI")}


def test_invokeai_chunk_and_plain_text_prompt(tmp_path):
    assert read_bytes(tmp_path, png_bytes(noise_rgb(), {"Dream": '"a face" -s 50'}), "i.png").generator == "InvokeAI"
    # "prompt" is a common key; only ComfyUI's node graph names a tool
    plain = read_bytes(tmp_path, png_bytes(noise_rgb(), {"prompt": "my holiday", "Title": "x"}), "p.png")
    assert plain.status == "none" and plain.generator_hints == ()


def test_jpeg_xmp_trained_algorithmic_media_claims_generated(tmp_path):
    data = jpeg_bytes(noise_rgb(), xmp=xmp_packet(IPTC + "trainedAlgorithmicMedia"))
    p = read_bytes(tmp_path, data, "xmp.jpg")
    assert p.status == "claims_generated"
    assert p.xmp_digital_source_type == IPTC + "trainedAlgorithmicMedia"
    assert not p.c2pa.present


def test_xmp_as_element_or_resource_and_capture_type(tmp_path):
    packet = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
              b'<rdf:Description xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/">'
              b'<Iptc4xmpExt:DigitalSourceType rdf:resource="' + (IPTC + "digitalCapture").encode() + b'"/>'
              b"</rdf:Description></rdf:RDF></x:xmpmeta>")  # fmt: skip
    assert P.read_xmp(packet)[0] == IPTC + "digitalCapture"
    p = read_bytes(tmp_path, jpeg_bytes(noise_rgb(), xmp=packet), "cap.jpg")
    assert p.status == "claims_captured"
    composite = read_bytes(tmp_path, jpeg_bytes(noise_rgb(), xmp=xmp_packet("compositeWithTrainedAlgorithmicMedia")),
                           "comp.jpg")  # fmt: skip
    assert composite.status == "claims_generated"


def test_exif_software_and_user_comment_name_generators(tmp_path):
    exif = Image.Exif()
    exif[P.EXIF_SOFTWARE] = "Adobe Firefly Image 3"
    p = read_bytes(tmp_path, jpeg_bytes(noise_rgb(), exif=exif), "ff.jpg")
    assert p.status == "claims_generated" and p.generator_hints[0].field == "exif:Software"
    assert p.generator == "Adobe Firefly"
    camera = Image.Exif()
    camera[P.EXIF_SOFTWARE] = "Adobe Photoshop 25.0 (Macintosh)"  # an editor, not a generator
    assert read_bytes(tmp_path, jpeg_bytes(noise_rgb(), exif=camera), "ps.jpg").status == "none"
    a1111 = Image.Exif()
    a1111.get_ifd(P.EXIF_IFD)[P.EXIF_USER_COMMENT] = b"UNICODE\0" + A1111_PARAMETERS.encode("utf-16-be")
    p = read_bytes(tmp_path, jpeg_bytes(noise_rgb(), exif=a1111), "a1111.jpg")
    assert [h.field for h in p.generator_hints] == ["exif:UserComment"] and p.status == "claims_generated"


def test_c2pa_manifest_signed_by_a_test_certificate_reports_signer_and_untrusted_state(tmp_path, signed_capture_jpeg):
    p = read_bytes(tmp_path, signed_capture_jpeg, "signed.jpg")
    assert p.status == "claims_captured"
    c = p.c2pa
    assert c.present and c.error is None
    assert c.validation_state == "Valid"  # the signature checks out…
    assert "signingCredential.untrusted" in c.validation_codes  # …but no trust list knows our CA
    assert (c.signer, c.issuer) == ("mfclip test signer", "mfclip tests")
    assert c.claim_generator == "mfclip-test-camera 1.0"
    assert c.actions == ("c2pa.created",) and c.digital_source_type == IPTC + "digitalCapture"


def test_c2pa_generated_source_type_claims_generated(tmp_path, c2pa_test_signer):
    data = c2pa_sign(c2pa_test_signer, jpeg_bytes(noise_rgb(2)), "image/jpeg", "trainedAlgorithmicMedia",
                     claim_generator="Adobe Firefly")  # fmt: skip
    p = read_bytes(tmp_path, data, "firefly.jpg")
    assert p.status == "claims_generated"
    assert [(h.field, h.tool) for h in p.generator_hints] == [("c2pa:claim_generator", "Adobe Firefly")]


def test_manifest_tampered_after_signing_is_invalid_signature(tmp_path, signed_capture_jpeg):
    at = signed_capture_jpeg.find(b"mfclip-test-camera")
    assert at > 0
    tampered = signed_capture_jpeg[:at] + b"mfclip-test-CAMERA" + signed_capture_jpeg[at + 18:]
    p = read_bytes(tmp_path, tampered, "tampered.jpg")
    assert p.status == "invalid_signature"
    assert p.c2pa.validation_state == "Invalid" and "claimSignature.mismatch" in p.c2pa.validation_codes


def test_pixels_edited_after_signing_is_invalid_signature(tmp_path, signed_capture_jpeg):
    edited = signed_capture_jpeg[:-40] + bytes(38) + signed_capture_jpeg[-2:]  # entropy data before EOI
    p = read_bytes(tmp_path, edited, "edited.jpg")
    assert p.status == "invalid_signature" and "assertion.dataHash.mismatch" in p.c2pa.validation_codes


def test_corrupt_manifest_is_unreadable_with_the_library_message(tmp_path, signed_capture_jpeg):
    at = signed_capture_jpeg.find(b"jumb")
    corrupt = signed_capture_jpeg[:at + 40] + b"\xff" * 200 + signed_capture_jpeg[at + 240:]
    p = read_bytes(tmp_path, corrupt, "corrupt.jpg")
    assert p.status == "unreadable"
    assert p.c2pa.present and p.c2pa.error and p.message == p.c2pa.error


def test_plain_photo_claims_nothing(tmp_path):
    from skimage import data

    p = read_bytes(tmp_path, jpeg_bytes(data.astronaut()), "plain.jpg")
    assert p.status == "none" and p.generator_hints == () and not p.c2pa.present and p.message is None
    assert P.read_provenance(str(Path(__file__).parents[1] / "examples" / "astronaut_pan.mp4"), "video").status == "none"


@pytest.mark.parametrize("data", [b"", b"not an image at all", png_bytes(noise_rgb())[:60],
                                  jpeg_bytes(noise_rgb(), xmp=b"<x:xmpmeta unclosed")])  # fmt: skip
def test_reading_never_raises(tmp_path, data):
    p = read_bytes(tmp_path, data, "odd.png")
    assert p.status in ("none", "unreadable")
    if data.startswith(b"\xff\xd8"):  # a packet that is not XML is reported, not ignored
        assert p.status == "unreadable" and "XMP" in p.message


def test_missing_file_and_a_failing_library_are_unreadable(tmp_path, monkeypatch):
    missing = P.read_provenance(str(tmp_path / "gone.jpg"))
    assert missing.status == "unreadable" and "FileNotFoundError" in missing.message

    def boom(stream):
        raise RuntimeError("native library crashed")

    monkeypatch.setattr(P, "read_c2pa", boom)
    p = read_bytes(tmp_path, jpeg_bytes(noise_rgb()), "x.jpg")
    assert p.status == "unreadable" and "native library crashed" in p.message


@pytest.mark.parametrize(
    "c2pa_info, xmp, hints, status",
    [
        (P.C2paInfo(), None, [], "none"),
        (P.C2paInfo(present=True, error="bad box"), None, [], "unreadable"),
        (P.C2paInfo(present=True, validation_state="Valid", source_types=(IPTC + "digitalCapture",)), None, [],
         "claims_captured"),
        (P.C2paInfo(present=True, validation_state="Valid", source_types=(IPTC + "digitalCapture",)), None,
         [P.GeneratorHint("png:parameters", "x", "t")], "claims_generated"),
        (P.C2paInfo(present=True, validation_state="Invalid", source_types=(IPTC + "trainedAlgorithmicMedia",)),
         None, [], "invalid_signature"),
        (P.C2paInfo(), "trainedAlgorithmicMedia", [], "claims_generated"),
        (P.C2paInfo(present=True, error="bad box"), IPTC + "digitalCapture", [], "claims_captured"),
    ],
)  # fmt: skip
def test_status_rules_in_order(c2pa_info, xmp, hints, status):
    assert P.status_of(c2pa_info, xmp, hints) == status


def test_signed_video_manifest_is_read(tmp_path, c2pa_test_signer):
    mp4 = (Path(__file__).parents[1] / "examples" / "astronaut_pan.mp4").read_bytes()
    p = read_bytes(tmp_path, c2pa_sign(c2pa_test_signer, mp4, "video/mp4", "trainedAlgorithmicMedia"), "v.mp4", "video")
    assert p.status == "claims_generated" and p.c2pa.validation_state == "Valid"


# ------------------------------------------------------------------------------------ in the reports


def _item(status: str, verdict: str | None) -> R.ItemResult:
    face = R.FaceResult(box=(0, 0, 10, 10), landmarks=None, det_score=0.9, score=0.9 if verdict == "fake" else 0.1)
    prov = P.Provenance(status=status)
    if verdict is None:
        return R.ItemResult("x.png", "image", "no_face", provenance=prov)
    return R.ItemResult(f"{status}-{verdict}.jpg", "image", "ok", score=face.score, verdict=verdict, faces=[face],
                        provenance=prov)  # fmt: skip


def test_disagreement_is_marked_counted_and_never_changes_the_verdict(tmp_path):
    items = [_item("claims_captured", "fake"), _item("claims_generated", "real"), _item("claims_generated", "fake"),
             _item("none", "real"), _item("invalid_signature", None)]  # fmt: skip
    assert [i.provenance_disagrees for i in items] == [True, True, False, False, False]
    result = R.ScanResult(model=R.ModelInfo("w.safetensors", "ab" * 32, 0.5), settings={},
                          started_at=R.utc_now(), finished_at=R.utc_now(), items=items)  # fmt: skip
    doc = result.to_json()
    jsonschema.Draft202012Validator(R.load_scan_schema()).validate(doc)
    assert doc["summary"]["provenance"] == {"read": 5, "claims_generated": 2, "claims_captured": 1,
                                            "invalid_signature": 1, "unreadable": 0, "disagreements": 2}  # fmt: skip
    assert [i["verdict"] for i in doc["items"]] == ["fake", "real", "fake", "real", None]
    console = Console(record=True, width=160)
    R.render_table(result, console)
    rows = [line for line in console.export_text().splitlines() if ".jpg" in line]
    assert [R.DISAGREE_MARK in line for line in rows] == [True, True, False, False]
    assert "2 claim generated" in R.summary_line(result)
    R.write_csv(result, tmp_path / "r.csv")
    with open(tmp_path / "r.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["provenance_status"] for r in rows] == [i.provenance.status for i in items]
    assert [r["provenance_disagrees"] for r in rows] == ["1", "1", "0", "0", "0"]


def test_html_page_shows_what_the_metadata_claims(tmp_path):
    from mfclip_cli.report.html import render_html

    signed = P.Provenance(status="claims_captured", c2pa=P.C2paInfo(
        present=True, validation_state="Valid", validation_codes=("signingCredential.untrusted",),
        signer="<b>cam</b>"))  # fmt: skip
    face = R.FaceResult(box=(0, 0, 10, 10), landmarks=None, det_score=0.9, score=0.9)
    items = [R.ItemResult(str(tmp_path / "gone.jpg"), "image", "ok", score=0.9, verdict="fake", faces=[face],
                          provenance=signed), _item("claims_generated", "real")]  # fmt: skip
    result = R.ScanResult(model=R.ModelInfo("w", "0" * 64, 0.5), settings={}, started_at=R.utc_now(),
                          finished_at=R.utc_now(), items=items)  # fmt: skip
    page = render_html(result)
    assert page.count('<div class="provenance">') == 2 and page.count(f"{R.DISAGREE_MARK}</b></div>") == 2
    assert "claims captured" in page and "signingCredential.untrusted" in page
    assert "<b>cam</b>" not in page and "&lt;b&gt;cam&lt;/b&gt;" in page  # metadata is escaped


# ------------------------------------------------------------------------------------------ in a scan


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random-init 'tiny' checkpoint with the default RetinaFace crop policy (scores mean nothing)."""
    from mfclip_cli.faces.types import CropPolicy
    from mfclip_cli.model import build_model, load_preset, save_checkpoint
    from mfclip_cli.model.metadata import CheckpointMeta, InputSpec, ThresholdRecord

    model = build_model(load_preset("tiny"), seed=0)
    meta = CheckpointMeta(threshold=ThresholdRecord(0.5, "test"), input=InputSpec(CropPolicy(), model.cfg.preprocess))
    return save_checkpoint(tmp_path_factory.mktemp("prov_ckpt") / "tiny.safetensors", model, meta=meta)


def scan_report(tmp_path: Path, checkpoint: Path, *args: str) -> dict:
    from typer.testing import CliRunner

    from mfclip_cli.cli import app

    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["scan", *map(str, args), "--weights", str(checkpoint), "--backend", "torch",
                                      "--device", "cpu", "--json", str(out), "--quiet"])  # fmt: skip
    assert result.exit_code in (0, 1, 3), result.output
    report = json.loads(out.read_text("utf-8"))
    jsonschema.Draft202012Validator(R.load_scan_schema()).validate(report)
    return report


@pytest.mark.slow
def test_metadata_cannot_change_the_score(tmp_path, tiny_checkpoint, c2pa_test_signer):
    """Copies with identical pixels and different claims score identically; only provenance differs."""
    from skimage import data

    rgb = data.astronaut()
    plain_jpeg = jpeg_bytes(rgb)
    files = {
        "plain.png": png_bytes(rgb),
        "a1111.png": png_bytes(rgb, {"parameters": A1111_PARAMETERS}),
        "plain.jpg": plain_jpeg,
        "xmp.jpg": inject_xmp_app1(plain_jpeg, xmp_packet(IPTC + "trainedAlgorithmicMedia", "Midjourney")),
        "c2pa.jpg": c2pa_sign(c2pa_test_signer, plain_jpeg, "image/jpeg", "digitalCapture"),
    }
    folder = tmp_path / "in"
    folder.mkdir()
    for name, blob in files.items():
        (folder / name).write_bytes(blob)
    items = {Path(i["path"]).name: i for i in scan_report(tmp_path, tiny_checkpoint, folder)["items"]}
    assert all(i["status"] == "ok" for i in items.values())
    assert items["plain.png"]["score"] == items["a1111.png"]["score"]
    assert items["plain.png"]["faces"] == items["a1111.png"]["faces"]
    assert items["plain.jpg"]["score"] == items["xmp.jpg"]["score"] == items["c2pa.jpg"]["score"]
    assert items["plain.jpg"]["faces"] == items["xmp.jpg"]["faces"] == items["c2pa.jpg"]["faces"]
    status = {name: i["provenance"]["status"] for name, i in items.items()}
    assert status == {"plain.png": "none", "a1111.png": "claims_generated", "plain.jpg": "none",
                      "xmp.jpg": "claims_generated", "c2pa.jpg": "claims_captured"}  # fmt: skip
    assert items["c2pa.jpg"]["provenance"]["c2pa"]["signer"] == "mfclip test signer"


@pytest.mark.slow
def test_no_provenance_skips_reading(tmp_path, tiny_checkpoint):
    from skimage import data

    path = tmp_path / "a1111.png"
    path.write_bytes(png_bytes(data.astronaut(), {"parameters": A1111_PARAMETERS}))
    on = scan_report(tmp_path, tiny_checkpoint, path)
    off = scan_report(tmp_path, tiny_checkpoint, path, "--no-provenance")
    assert on["items"][0]["provenance"]["status"] == "claims_generated"
    assert on["summary"]["provenance"]["claims_generated"] == 1
    assert off["items"][0]["provenance"] is None and off["settings"]["provenance"] is False
    assert off["summary"]["provenance"] == dict.fromkeys(R.PROVENANCE_COUNTS, 0)
    assert on["items"][0]["score"] == off["items"][0]["score"]


@pytest.mark.slow
def test_unreadable_files_keep_their_provenance_and_non_utf8_names_work(tmp_path, tiny_checkpoint):
    import os

    folder = tmp_path / "in"
    folder.mkdir()
    broken = os.path.join(os.fsencode(folder), b"caf\xe9.png")  # a name that is not UTF-8
    with open(broken, "wb") as fh:
        fh.write(png_bytes(noise_rgb(), {"parameters": A1111_PARAMETERS})[:400])  # text chunk kept, pixels cut
    report = scan_report(tmp_path, tiny_checkpoint, folder)
    (item,) = report["items"]
    assert item["status"] == "error" and "path_b64" in item
    assert item["provenance"]["status"] == "claims_generated"


def test_reading_metadata_decodes_no_pixels(tmp_path, monkeypatch):
    """Provenance reads headers only (the scan's throughput depends on it): loading pixels here is an error."""
    from PIL import ImageFile

    def no_pixels(self):
        raise AssertionError("read_provenance decoded pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_pixels)
    exif = Image.Exif()
    exif[P.EXIF_SOFTWARE] = "Midjourney"
    assert read_bytes(tmp_path, jpeg_bytes(noise_rgb(), exif=exif), "m.jpg").generator == "Midjourney"
    assert read_bytes(tmp_path, png_bytes(noise_rgb(), {"parameters": A1111_PARAMETERS}), "a.png").status == \
        "claims_generated"


def test_training_and_eval_decode_the_same_pixels_whatever_the_metadata(tmp_path, signed_capture_jpeg):
    """The decoder every path shares (scan, training crops, eval) returns identical pixels for copies that
    differ only in metadata, and only scan reads provenance (into the report, never into the model)."""
    import cv2

    from mfclip_cli.media import decode_image

    plain = jpeg_bytes(noise_rgb(3))
    copies = {"plain.jpg": plain,
              "xmp.jpg": inject_xmp_app1(plain, xmp_packet(IPTC + "trainedAlgorithmicMedia", "Midjourney")),
              "plain.png": png_bytes(noise_rgb(3)),
              "a1111.png": png_bytes(noise_rgb(3), {"parameters": A1111_PARAMETERS})}  # fmt: skip
    for name, blob in copies.items():
        (tmp_path / name).write_bytes(blob)
    for a, b in (("plain.jpg", "xmp.jpg"), ("plain.png", "a1111.png")):
        assert np.array_equal(decode_image(tmp_path / a), decode_image(tmp_path / b))
        assert np.array_equal(cv2.imread(str(tmp_path / a)), cv2.imread(str(tmp_path / b)))  # crop cache path
    package = Path(P.__file__).parent
    readers = sorted(str(f.relative_to(package)) for f in package.rglob("*.py") if "read_provenance" in f.read_text())
    assert readers == ["provenance.py", "scan.py"]
