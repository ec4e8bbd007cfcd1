"""Data layer: dataset layouts, manifests, splits, protocols and pixel transforms."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import EXTERNAL_DIR, FACES_DIR

from mfclip_cli.data.layouts import detect_layout, read_dataset, read_diff, read_generic, read_genface
from mfclip_cli.data.manifest import Record, manifest_sha256, read_manifest_csv, write_manifest_csv
from mfclip_cli.data.protocols import (
    cross_dataset,
    cross_forgery,
    cross_generator,
    in_domain,
    leave_source_out,
    make_protocol,
    write_split_files,
)
from mfclip_cli.data.splits import assign_splits, check_disjoint
from mfclip_cli.data.taxonomy import KINDS, Label, label_for_generator, lookup_generator
from mfclip_cli.data.transforms import PERTURBATIONS, TrainAugment, get_perturbation, standardize
from mfclip_cli.errors import DatasetError

FACES = FACES_DIR
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def touch(root: Path, rel: str, data: bytes = b"x") -> Path:
    """Create a file (readers go by extension, so bytes need not decode)."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_png(root: Path, rel: str, value: int = 128) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((8, 8, 3), value, np.uint8))
    return path


def test_dataset_layouts_read_every_extension_a_scan_discovers(tmp_path):
    """One extension table: .jfif images and .m4v videos are scanned and also read as training data."""
    from mfclip_cli.media import MEDIA_EXTS, kind_from_extension

    assert {".jfif", ".m4v"} <= MEDIA_EXTS
    for i, ext in enumerate(sorted(MEDIA_EXTS)):
        touch(tmp_path, f"real/cam/r{i}{ext.upper() if i % 2 else ext}")
        touch(tmp_path, f"fake/face_swap/simswap/f{i}{ext}")
    touch(tmp_path, "real/cam/notes.txt")
    recs = read_generic(tmp_path)
    assert sorted(Path(r.path).suffix.lower() for r in recs) == sorted(2 * list(MEDIA_EXTS))
    assert all(kind_from_extension(r.path) is not None for r in recs)


@pytest.fixture
def generic_tree(tmp_path: Path) -> Path:
    write_png(tmp_path, "real/src_a/a1.jpg")
    touch(tmp_path, "real/src_a/README.md")
    touch(tmp_path, "real/src_a/manifest.csv")
    touch(tmp_path, "real/src_a/.hidden.jpg")
    touch(tmp_path, "real/src_b/vid1/frame_0001.png")
    touch(tmp_path, "real/src_b/vid1/frame_0002.png")
    touch(tmp_path, "real/src_b/clip.MP4")
    touch(tmp_path, "fake/entire_synthesis/stylegan2_tpdne/f1.png")
    touch(tmp_path, "fake/entire_synthesis/stylegan2_tpdne/f2.webp")
    touch(tmp_path, "fake/face_swap/My-New-Swap/s1.jpeg")
    touch(tmp_path, "fake/face_swap/My-New-Swap/notes.txt")
    return tmp_path


@pytest.fixture(scope="module")
def faces() -> list[Record]:
    if not FACES.is_dir():
        pytest.skip(f"shared dataset not found at {FACES}")
    return read_dataset(FACES)


def synthetic(n_per_gen: int = 60, frames: int = 1) -> list[Record]:
    """Records without files: 3 real sources, 3 generators (2 kinds), ``frames`` files per group."""
    recs = []
    gens = {"stylegan2": ("entire_synthesis", "gan"), "ddpm": ("entire_synthesis", "diffusion"),
            "diffface": ("face_swap", "diffusion")}
    for src in ("ffhq", "celeba", "web"):
        for i in range(n_per_gen):
            for f in range(frames):
                recs.append(Record(f"/d/real/{src}/{i}/{f}.png", Label.real(), src, f"real/{src}/{i}"))
    for gen, (kind, fam) in gens.items():
        for i in range(n_per_gen):
            for f in range(frames):
                recs.append(Record(f"/d/fake/{gen}/{i}/{f}.png", Label.fake(kind, fam, gen), gen, f"fake/{gen}/{i}"))
    return sorted(recs, key=lambda r: r.path)


# --- layouts -----------------------------------------------------------------------------------------

def test_generic_reader_labels_sources_and_groups(generic_tree: Path):
    recs = read_generic(generic_tree)
    rel = [Path(r.path).relative_to(generic_tree).as_posix() for r in recs]
    assert rel == sorted(rel)
    assert len(recs) == 7  # README.md, manifest.csv, notes.txt and hidden files are skipped
    by = {p: r for p, r in zip(rel, recs)}
    real = by["real/src_a/a1.jpg"]
    assert (real.y, real.source, real.generator, real.kind, real.split) == (0, "src_a", "real", "real", None)
    assert by["real/src_b/vid1/frame_0001.png"].group == "real/src_b/vid1"
    assert by["real/src_b/vid1/frame_0002.png"].group == "real/src_b/vid1"
    assert by["real/src_b/clip.MP4"].group == "real/src_b/clip.MP4"
    sg = by["fake/entire_synthesis/stylegan2_tpdne/f1.png"]
    assert (sg.kind, sg.family, sg.generator, sg.source) == ("entire_synthesis", "gan", "stylegan2", "stylegan2_tpdne")
    new = by["fake/face_swap/My-New-Swap/s1.jpeg"]
    assert (new.kind, new.family, new.generator) == ("face_swap", "unknown", "My-New-Swap")
    assert all(Path(r.path).is_absolute() for r in recs)
    assert detect_layout(generic_tree) == "generic"


def test_generic_reader_rejects_unknown_kind_folder(generic_tree: Path):
    touch(generic_tree, "fake/deepfakes/x/1.png")
    with pytest.raises(DatasetError, match="entire_synthesis, face_swap, face_edit, image_to_image"):
        read_generic(generic_tree)


def test_genface_reader_takes_split_kind_and_family_from_tree(tmp_path: Path):
    for split in ("train", "val", "test"):
        touch(tmp_path, f"{split}/real/ffhq/{split}_r.png")
        touch(tmp_path, f"{split}/fake/EFS/Diffusion/DDPM/{split}_d.png")
        touch(tmp_path, f"{split}/fake/FS/GAN/{split}_s.png")  # no generator folder
        touch(tmp_path, f"{split}/fake/AM/Diffusion/MyEditor/{split}_e.png")
    assert detect_layout(tmp_path) == "genface"
    recs = read_dataset(tmp_path)
    assert len(recs) == 12
    assert Counter(r.split for r in recs) == {"train": 4, "val": 4, "test": 4}
    assert all(Path(r.path).name.startswith(r.split) for r in recs)
    labels = {(r.y, r.kind, r.family, r.generator) for r in recs}
    assert labels == {
        (0, "real", "real", "real"),
        (1, "entire_synthesis", "diffusion", "ddpm"),
        (1, "face_swap", "gan", "face swap gan"),
        (1, "face_edit", "diffusion", "MyEditor"),
    }
    assert recs == read_genface(tmp_path)


def test_diff_reader_maps_categories_to_kinds(tmp_path: Path):
    touch(tmp_path, "Real/celeba/r1.jpg")
    touch(tmp_path, "Real/r2.jpg")
    touch(tmp_path, "T2I/Midjourney/a.png")
    touch(tmp_path, "I2I/SDXL_Refiner/b.png")
    touch(tmp_path, "FS/DiffFace/c.png")
    touch(tmp_path, "FE/Imagic/d.png")
    touch(tmp_path, "FE/NewEdit/e.png")
    assert detect_layout(tmp_path) == "diff"
    recs = read_diff(tmp_path)
    got = {Path(r.path).name: (r.y, r.kind, r.family, r.generator, r.source) for r in recs}
    assert got == {
        "r1.jpg": (0, "real", "real", "real", "celeba"),
        "r2.jpg": (0, "real", "real", "real", "Real"),
        "a.png": (1, "entire_synthesis", "diffusion", "midjourney", "Midjourney"),
        "b.png": (1, "image_to_image", "diffusion", "stable diffusion xl refiner", "SDXL_Refiner"),
        "c.png": (1, "face_swap", "diffusion", "diffface", "DiffFace"),
        "d.png": (1, "face_edit", "diffusion", "imagic", "Imagic"),
        "e.png": (1, "face_edit", "diffusion", "NewEdit", "NewEdit"),
    }


def test_csv_manifest_round_trip(generic_tree: Path, tmp_path: Path):
    recs = assign_splits(read_generic(generic_tree), seed=3)
    out = tmp_path / "out" / "m.csv"
    write_manifest_csv(recs, out)
    assert read_manifest_csv(out) == recs
    assert detect_layout(out) == "csv"
    assert read_dataset(out) == sorted(recs, key=lambda r: r.path)
    assert manifest_sha256(read_manifest_csv(out)) == manifest_sha256(recs)


def test_csv_manifest_minimal_columns_relative_to_root(generic_tree: Path, tmp_path: Path):
    csv_path = tmp_path / "elsewhere" / "m.csv"
    csv_path.parent.mkdir()
    csv_path.write_text(
        "path,label,generator,split\n"
        "real/src_a/a1.jpg,real,,train\n"
        "fake/entire_synthesis/stylegan2_tpdne/f1.png,fake,sdxl,test\n"
        "fake/face_swap/My-New-Swap/s1.jpeg,fake,Some Swapper,\n"
    )
    with pytest.raises(DatasetError, match="line 4: unknown forgery kind"):
        read_manifest_csv(csv_path, root=generic_tree)
    csv_path.write_text(
        "path,label,kind,generator,split\n"
        "real/src_a/a1.jpg,real,,,train\n"
        "fake/entire_synthesis/stylegan2_tpdne/f1.png,fake,,sdxl,test\n"
        "fake/face_swap/My-New-Swap/s1.jpeg,fake,face_swap,Some Swapper,\n"
    )
    a, b, c = read_manifest_csv(csv_path, root=generic_tree)
    assert a.path == str(generic_tree / "real/src_a/a1.jpg") and a.source == "src_a" and a.split == "train"
    assert (b.kind, b.family, b.generator, b.split) == ("entire_synthesis", "diffusion", "sdxl", "test")
    assert (c.kind, c.family, c.generator, c.split, c.group) == (
        "face_swap", "unknown", "Some Swapper", None, "fake/face_swap/My-New-Swap/s1.jpeg")


def test_csv_with_bad_label_names_the_row(generic_tree: Path, tmp_path: Path):
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("path,label\nreal/src_a/a1.jpg,real\nreal/src_b/clip.MP4,genuine\n")
    with pytest.raises(DatasetError, match=r"line 3: unknown label 'genuine'; valid labels: real, fake"):
        read_manifest_csv(csv_path, root=generic_tree)


def test_csv_with_unknown_column_or_missing_file(generic_tree: Path, tmp_path: Path):
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("path,label,generater\nreal/src_a/a1.jpg,real,\n")
    with pytest.raises(DatasetError, match="unknown column.*generater"):
        read_manifest_csv(csv_path, root=generic_tree)
    csv_path.write_text("path,label\nreal/src_a/missing.jpg,real\n")
    with pytest.raises(DatasetError, match="do not exist"):
        read_manifest_csv(csv_path, root=generic_tree)


def test_unknown_layout_explains_the_expected_trees(tmp_path: Path):
    touch(tmp_path, "photos/a.jpg")
    with pytest.raises(DatasetError, match="cannot tell the layout") as err:
        read_dataset(tmp_path)
    assert "ROOT/fake/<kind>/<generator>" in str(err.value) and "T2I" in str(err.value)
    with pytest.raises(DatasetError, match="valid: auto, generic, genface, diff, csv"):
        read_dataset(tmp_path, layout="imagenet")


def _images_in(folder: Path) -> int:
    return sum(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*"))


def test_shared_faces_dataset_reads_as_generic(faces: list[Record]):
    # expected counts come from the folders themselves, so the test follows the pool as it grows
    real_dirs = sorted(d for d in (FACES / "real").iterdir() if d.is_dir())
    fake_dirs = sorted(d for d in (FACES / "fake").glob("*/*") if d.is_dir())
    assert Counter(r.y for r in faces) == {0: sum(map(_images_in, real_dirs)), 1: sum(map(_images_in, fake_dirs))}
    assert Counter(r.source for r in faces if r.y == 0) == {d.name: _images_in(d) for d in real_dirs}
    assert Counter(r.source for r in faces if r.y == 1) == {d.name: _images_in(d) for d in fake_dirs}
    for r in faces:
        if r.y:  # kind from the folder, family from the taxonomy: the pool holds no generator it cannot place
            assert Path(r.path).relative_to(FACES).parts[1] == r.kind
            assert r.family != "unknown", r.source
    assert not any(Path(r.path).suffix.lower() in (".md", ".csv") for r in faces)


# --- taxonomy of generator folders --------------------------------------------------------------------

def _generator_dirs() -> list[Path]:
    roots = [FACES, *sorted(p for p in EXTERNAL_DIR.glob("*") if p.is_dir())]
    return sorted(d for root in roots for d in root.glob("fake/*/*") if d.is_dir())


@pytest.mark.skipif(not _generator_dirs(), reason="no shared data found")
def test_every_shared_generator_folder_gets_its_kind_from_the_tree_and_a_known_family():
    for d in _generator_dirs():
        label = label_for_generator(d.name, d.parent.name)
        assert label.kind == d.parent.name and label.family != "unknown", d


def test_new_generators_have_families_and_prompt_sets_of_one_model_share_its_name():
    assert label_for_generator("midjourney_v3", "entire_synthesis") == Label.fake(
        "entire_synthesis", "diffusion", "midjourney v3")
    assert label_for_generator("flux1_schnell", "entire_synthesis").family == "diffusion"
    assert label_for_generator("inswapper_128", "face_swap") == Label.fake("face_swap", "gan", "inswapper 128")
    assert (label_for_generator("flux1_dev_styles").generator == label_for_generator("flux1_dev_occupations").generator
            == "flux.1 dev")
    assert (label_for_generator("sd15_negroles").generator == label_for_generator("sd15_photo_of_a_person").generator
            == "stable diffusion 1.5")
    assert label_for_generator("sdxl_realvisxl").family == "diffusion"


def test_unlisted_variants_take_kind_and_family_from_the_longest_table_prefix():
    # a prefix at a '_' boundary places the folder; the display name keeps the folder's own words
    assert lookup_generator("SD15-Portraits") == ("entire_synthesis", "diffusion", "SD15-Portraits")
    assert lookup_generator("midjourney_v6_1") == ("entire_synthesis", "diffusion", "midjourney v6 1")
    assert lookup_generator("sdxl_refiner_v2")[0] == "image_to_image"  # sdxl_refiner beats sdxl
    assert lookup_generator("stylegan3_t")[1] == "gan"
    # no partial-word matches, and a name the table cannot place stays 'unknown' with the layout's kind
    assert lookup_generator("sdfoo") is None and lookup_generator("fluxcapacitor") is None
    assert label_for_generator("mystery_net", "face_edit") == Label.fake("face_edit", "unknown", "mystery net")
    for kind in KINDS:
        assert label_for_generator("midjourney_v3", kind).kind == kind


def test_manifest_hash_ignores_order_and_mount_point():
    recs = synthetic(5)
    moved = [Record(r.path.replace("/d/", "/mnt/other/d/"), r.label, r.source, r.group) for r in recs]
    assert manifest_sha256(recs) == manifest_sha256(list(reversed(recs))) == manifest_sha256(moved)
    assert manifest_sha256(recs) != manifest_sha256(recs[1:])


# --- splits ------------------------------------------------------------------------------------------

def test_splits_are_deterministic_grouped_and_proportional():
    recs = synthetic(200, frames=3)
    a, b, c = assign_splits(recs, seed=0), assign_splits(recs, seed=0), assign_splits(recs, seed=1)
    assert a == b and a != c
    assert [r.path for r in a] == [r.path for r in recs]
    group_splits: dict[str, set[str]] = {}
    for r in a:
        group_splits.setdefault(r.group, set()).add(r.split)
    assert all(len(s) == 1 for s in group_splits.values())
    counts = Counter(r.split for r in a)
    assert abs(counts["val"] / len(a) - 0.1) < 0.03 and abs(counts["test"] / len(a) - 0.2) < 0.03
    # a group's split does not depend on which other records are present
    assert assign_splits(recs[:30], seed=0) == a[:30]


def test_preset_splits_are_kept_for_the_whole_group():
    recs = synthetic(20, frames=2)
    recs[0] = Record(recs[0].path, recs[0].label, recs[0].source, recs[0].group, "val")
    out = assign_splits(recs, seed=0)
    assert {r.split for r in out if r.group == recs[0].group} == {"val"}
    recs[1] = Record(recs[1].path, recs[1].label, recs[1].source, recs[1].group, "test")
    with pytest.raises(DatasetError, match="preset to both"):
        assign_splits(recs)


def test_disjoint():
    recs = synthetic(3)
    assert check_disjoint(recs[:4], recs[3:6]) == [recs[3].path]


# --- protocols ---------------------------------------------------------------------------------------

def _groups(recs: list[Record]) -> set[str]:
    return {r.group for r in recs}


def test_in_domain_is_group_disjoint():
    split = in_domain(synthetic(50, frames=2), seed=0)
    test = split.tests["in-domain"]
    assert not (_groups(split.train) & _groups(split.val)) and not (_groups(split.train) & _groups(test))
    assert {r.split for r in split.train} == {"train"} and {r.split for r in test} == {"test"}


def test_cross_generator_holds_generators_out_of_training(faces: list[Record]):
    held = {"stable diffusion 1.4", "generated photos gan"}
    split = cross_generator(faces, test_generators=["sd14_blonde_woman", "Generated Photos GAN"], seed=0)
    assert set(split.tests) == {f"generator:{g}" for g in held}
    fit = split.train + split.val
    others = {r.generator for r in faces if r.y} - held
    assert others and {r.generator for r in fit if r.y} == others
    reals = None
    for name, recs in split.tests.items():
        assert {r.y for r in recs} == {0, 1}
        assert {r.generator for r in recs if r.y} == {name.removeprefix("generator:")}
        assert not check_disjoint(fit, recs) and not (_groups(fit) & _groups(recs))
        this_reals = [r.path for r in recs if r.y == 0]
        assert reals is None or this_reals == reals  # every test set shares the same reals
        reals = this_reals
    # naming the training side instead gives the same split
    other_folders = sorted({r.source for r in faces if r.y and r.generator in others})
    assert cross_generator(faces, train_generators=other_folders, seed=0) == split


def test_cross_generator_unknown_name_lists_available(faces: list[Record]):
    with pytest.raises(DatasetError, match="unknown generator name.*'dalle9'") as err:
        cross_generator(faces, test_generators=["dalle9"])
    for name in ("stylegan2", "stylegan2_tpdne", "stable diffusion 1.4", "sd14_blonde_woman"):
        assert name in str(err.value)


def test_cross_forgery_tests_each_other_kind():
    split = cross_forgery(synthetic(80), train_kind="entire_synthesis", seed=0)
    assert list(split.tests) == ["kind:face_swap"]
    assert {r.kind for r in split.train if r.y} == {"entire_synthesis"}
    with pytest.raises(DatasetError, match="valid: entire_synthesis"):
        cross_forgery(synthetic(5), train_kind="deepfake")


def test_cross_dataset_tests_all_of_the_other_dataset():
    a, b = synthetic(40), [Record("/other" + r.path, r.label, r.source, r.group) for r in synthetic(10)]
    split = cross_dataset(a, b, seed=0)
    assert len(split.tests["cross-dataset"]) == len(b)
    assert len(split.train) + len(split.val) == len(a)
    with pytest.raises(DatasetError, match="in both datasets"):
        cross_dataset(a, a[:10])


def test_leave_source_out_holds_every_source_and_generator_out_once(faces: list[Record]):
    runs = leave_source_out(faces, seed=0)
    n_generators = len({r.generator for r in faces if r.y})
    n_sources = len({r.source for r in faces if r.y == 0})
    assert len(runs) == max(n_generators, n_sources)
    held_gens, held_srcs = [], []
    for run in runs:
        ((name, test),) = run.tests.items()
        gen = {r.generator for r in test if r.y}
        src = {r.source for r in test if r.y == 0}
        assert len(gen) == len(src) == 1 and name == f"heldout:{gen.pop()}+{src.pop()}"
        g, s = name.removeprefix("heldout:").split("+")
        held_gens.append(g)
        held_srcs.append(s)
        fit = run.train + run.val
        assert g not in {r.generator for r in fit if r.y} and s not in {r.source for r in fit if r.y == 0}
        assert {r.y for r in run.train} == {r.y for r in run.val} == {0, 1}
        assert len(fit) + len(test) == len(faces)
    assert set(held_gens) == {r.generator for r in faces if r.y}
    assert set(held_srcs) == {r.source for r in faces if r.y == 0}
    # the longer list is held out exactly once per name, the shorter one in rotation
    longer = held_srcs if n_sources >= n_generators else held_gens
    assert len(set(longer)) == len(longer) == len(runs)


def test_make_protocol_dispatch_and_split_files(tmp_path: Path):
    recs = synthetic(40)
    (split,) = make_protocol("cross-generator", recs, test_generators=["ddpm"], seed=1)
    paths = write_split_files(split, tmp_path / "run")
    assert sorted(p.name for p in paths.values()) == ["test_generator_ddpm.csv", "train.csv", "val.csv"]
    back = read_manifest_csv(paths["generator:ddpm"], check_files=False)
    assert back == split.tests["generator:ddpm"]
    assert len(make_protocol("leave-source-out", recs)) == 3
    with pytest.raises(DatasetError, match="valid: in-domain, cross-generator, cross-forgery"):
        make_protocol("random", recs)


# --- transforms --------------------------------------------------------------------------------------

@pytest.fixture
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    img[:, :8] = (255, 0, 0)  # a red stripe on the left, to check channel order and flips
    return img


def test_train_augment_is_deterministic_and_keeps_shape(image: np.ndarray):
    aug = TrainAugment()
    a = aug(image, np.random.default_rng(7))
    b = aug(image, np.random.default_rng(7))
    assert a.shape == image.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    outs = [aug(image, np.random.default_rng(s)) for s in range(8)]
    assert any(not np.array_equal(o, outs[0]) for o in outs)


def test_flip_only_augment_flips(image: np.ndarray):
    flip = TrainAugment(p_flip=1.0, p_jpeg=0.0, p_blur=0.0, p_downup=0.0)
    np.testing.assert_array_equal(flip(image, np.random.default_rng(0)), image[:, ::-1])
    none = TrainAugment(p_flip=0.0, p_jpeg=0.0, p_blur=0.0, p_downup=0.0)
    np.testing.assert_array_equal(none(image, np.random.default_rng(0)), image)


def test_strong_augment_alters_most_images_and_unknown_names_fail(image: np.ndarray):
    from mfclip_cli.data.transforms import train_augment
    from mfclip_cli.errors import MfclipError

    def changed_share(aug: TrainAugment) -> float:
        # flips aside: how many of 200 draws leave the pixels (up to a flip) untouched
        same = 0
        for seed in range(200):
            out = aug(image, np.random.default_rng(seed))
            same += np.array_equal(out, image) or np.array_equal(out, image[:, ::-1])
        return 1 - same / 200

    default, strong = changed_share(train_augment("default")), changed_share(train_augment("strong"))
    # default: 1 - 0.7*0.7*0.5 = 0.755 expected; strong: 1 - 0.4*0.7*0.1 = 0.972
    assert 0.65 < default < 0.85 and strong > 0.93, (default, strong)
    with pytest.raises(MfclipError, match="unknown augmentation"):
        train_augment("wild")


def test_jpeg_changes_pixels_and_keeps_rgb_order(image: np.ndarray):
    out = get_perturbation("jpeg50")(image)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.array_equal(out, image)
    red = out[4:-4, 1:6].reshape(-1, 3).mean(axis=0)
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


def test_every_perturbation_keeps_shape(image: np.ndarray):
    for name, fn in PERTURBATIONS.items():
        out = fn(image)
        assert out.shape == image.shape and out.dtype == np.uint8, name
    assert {"jpeg90", "jpeg70", "jpeg50", "blur1", "blur2", "down0.5", "reencode"} <= set(PERTURBATIONS)
    with pytest.raises(ValueError, match="valid: jpeg90"):
        get_perturbation("jpeg10")


def test_standardize_resizes_shorter_side_and_reencodes(image: np.ndarray):
    out = standardize(image, size=96, quality=90)
    assert out.shape == (96, 128, 3) and out.dtype == np.uint8
    with pytest.raises(ValueError, match="RGB uint8"):
        standardize(image.astype(np.float32))


def test_crop_cache_namespace_follows_the_policy_and_the_crop_code_version(monkeypatch):
    from mfclip_cli.data import crops
    from mfclip_cli.faces.types import CropPolicy

    base = crops.policy_key(CropPolicy())
    assert base == crops.policy_key(CropPolicy()) and len(base) == 12
    assert crops.policy_key(CropPolicy(margin=0.3)) != base
    monkeypatch.setattr(crops, "CROP_CODE_VERSION", crops.CROP_CODE_VERSION + 1)
    assert crops.policy_key(CropPolicy()) != base  # a crop-code change never reuses old crops
