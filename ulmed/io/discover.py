"""Input auto-detection: what is in a file or folder tree, with no format flag.

One walk of the tree sorts every file into one of:

* DICOM instances (grouped into series by :func:`ulmed.io.dicom_scan.scan_dicom`);
* NIfTI volumes and 2D images to protect;
* targets: files under a ``masks``/``labels`` folder that sits beside an ``images``
  folder (``DATASET/images/a.png`` <-> ``DATASET/masks/a.png``), or under ``--masks``;
  they are read as targets and copied unchanged, never perturbed;
* other files (``index.csv``, licences, READMEs), copied unchanged so that a data set
  stays complete;
* bad files, reported with a reason and skipped;
* a DICOMDIR, skipped: it would list the old UIDs.

Hidden files and folders (names starting with ``.``) are ignored.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

from ulmed.errors import InputError, os_reason
from ulmed.io.dicom_series import DicomScan
from ulmed.io.kinds import IMAGE_SUFFIXES, is_image_path, is_nifti_path, output_relpath

#: Folder names that hold images, and the names of their sibling target folders.
IMAGE_DIRS = ("images", "imagesTr", "imagesTs", "image", "img", "imgs")
TARGET_DIRS = ("masks", "labels", "labelsTr", "labelsTs", "mask", "label", "annotations")


@dataclass
class Item:
    """One NIfTI or image file to protect.

    Args:
        path: Absolute input path.
        rel: Path relative to the input root (the record key and output location).
        target: Its mask or label map, if one was found.
    """

    path: Path
    rel: Path
    target: Path | None = None


@dataclass
class Inventory:
    """Everything found under an input root."""

    root: Path
    dicom: DicomScan
    nifti: list[Item] = field(default_factory=list)
    images: list[Item] = field(default_factory=list)
    targets: list[Path] = field(default_factory=list)
    others: list[Path] = field(default_factory=list)
    bad: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def n_protectable(self) -> int:
        """How many records (series, volumes, images) would be protected."""
        return len(self.dicom.series) + len(self.nifti) + len(self.images)


def _walk(root: Path) -> list[Path]:
    """The files under ``root`` (hidden ones left out); links to folders are listed, not followed."""
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        names = [*filenames, *(d for d in dirnames if os.path.islink(os.path.join(dirpath, d)))]
        files.extend(Path(dirpath) / f for f in sorted(names) if not f.startswith("."))
    return files


def link_problem(path: Path) -> str | None:
    """Why a symbolic link cannot be read (its target is missing, or it loops), or None. Never raises."""
    if not path.is_symlink():
        return None
    try:
        path.stat()
    except FileNotFoundError:
        return "broken symbolic link; its target does not exist"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop (it leads back to itself); fix or remove the link"
        return f"symbolic link cannot be followed ({os_reason(exc)}); fix or remove the link"
    return None


def _drop_links(files: list[Path], inv: Inventory) -> list[Path]:
    """``files`` less the links that cannot be used: broken ones are bad, links to folders skipped."""
    kept = []
    for f in files:
        if reason := link_problem(f):
            inv.bad.append((f, reason))
        elif f.is_symlink() and f.is_dir():
            inv.skipped.append((f, "symbolic link to a folder, not followed; point -i at the folder or copy it in"))
        else:
            kept.append(f)
    return kept


def _is_target_dir(path: Path) -> bool:
    """A folder named like masks/labels whose parent also holds an images folder."""
    if path.name not in TARGET_DIRS:
        return False
    return any((path.parent / name).is_dir() for name in IMAGE_DIRS)


def _target_root_of(path: Path, root: Path) -> Path | None:
    """The target folder above ``path`` inside ``root``, if ``path`` lies in one."""
    for parent in path.relative_to(root).parents:
        candidate = root / parent
        if candidate != root and _is_target_dir(candidate):
            return candidate
    return None


def _same_stem_candidates(folder: Path, rel: Path) -> list[Path]:
    """``rel`` under ``folder``, and the same name with another image suffix or .nii/.nii.gz."""
    base = folder / rel
    name = rel.name
    stem = name[:-7] if name.endswith(".nii.gz") else Path(name).stem
    suffixes = (*IMAGE_SUFFIXES, ".nii", ".nii.gz")
    return [base] + [base.with_name(stem + s) for s in suffixes if stem + s != name]


def find_target(image_path: Path, root: Path, masks_root: Path | None) -> Path | None:
    """The mask/label file of an image, by the same relative path.

    With ``masks_root`` the path is taken relative to ``root``; otherwise relative to the
    image's ``images`` folder, looked up in each sibling target folder.
    """
    if masks_root is not None:
        rel = image_path.relative_to(root)
        folders = [masks_root]
    else:
        rel = None
        folders = []
        for parent in image_path.relative_to(root).parents:
            folder = root / parent
            if folder.name in IMAGE_DIRS:
                rel = image_path.relative_to(folder)
                folders = [folder.parent / name for name in TARGET_DIRS if (folder.parent / name).is_dir()]
                break
    if rel is None:
        return None
    for folder in folders:
        for candidate in _same_stem_candidates(folder, rel):
            if candidate.is_file():
                return candidate
    return None


def _is_dicom_file(path: Path) -> bool:
    """Whether a file without a ``.dcm``, NIfTI or image suffix is DICOM (pydicom is imported here, not before)."""
    from ulmed.io.dicom_dataset import is_dicom_file

    return is_dicom_file(path)


def _drop_output_collisions(items: list[Item], bad: list[tuple[Path, str]]) -> list[Item]:
    """Keep the first of several images that would be written to the same output (a.jpg, a.png)."""
    seen: dict[Path, Item] = {}
    kept = []
    for item in items:
        out = output_relpath(item.rel)
        if out in seen:
            bad.append((item.path, f"would be written to the same output {out} as {seen[out].rel}; rename one of them"))
            continue
        seen[out] = item
        kept.append(item)
    return kept


def discover(input_path: str | Path, masks: str | Path | None = None, key_salt: str | None = None) -> Inventory:
    """Sort everything under ``input_path`` (a file or a folder) into an :class:`Inventory`.

    Args:
        input_path: A DICOM file or tree, a NIfTI file or folder, an image folder, or a
            data-set folder holding ``images/`` and ``masks/`` (or ``labels/``).
        masks: Optional folder of masks matched to the images by relative path.
        key_salt: The secret that keys DICOM series keys (:func:`ulmed.io.dicom_scan.scan_dicom`).

    Raises:
        InputError: The input does not exist, or holds nothing that ulmed can protect.
    """
    path = Path(input_path).expanduser().resolve()
    if not path.exists():
        raise InputError("does not exist; check the -i path", path)
    masks_root = Path(masks).expanduser().resolve() if masks is not None else None
    if masks_root is not None and not masks_root.is_dir():
        raise InputError("masks folder does not exist; check --masks", masks_root)
    root = path if path.is_dir() else path.parent
    files = _walk(path) if path.is_dir() else [path]
    if not files:
        raise InputError("folder is empty; point -i at a DICOM export, a NIfTI file/folder or an image folder", path)

    inv = Inventory(root=root, dicom=DicomScan(series=[], non_image=[], bad=[]))
    dicom_candidates: list[Path] = []
    for f in _drop_links(files, inv):
        if masks_root is not None and masks_root in f.parents:
            inv.targets.append(f)
            continue
        if _target_root_of(f, root) is not None:
            inv.targets.append(f)
            continue
        if f.name.upper() == "DICOMDIR":
            inv.skipped.append((f, "DICOMDIR index not carried over (it lists the old UIDs); "
                                   "rebuild it from the output, e.g. with dcmmkdir"))
        elif is_nifti_path(f):
            inv.nifti.append(Item(f, f.relative_to(root)))
        elif is_image_path(f):
            inv.images.append(Item(f, f.relative_to(root)))
        elif f.suffix.lower() == ".dcm" or _is_dicom_file(f):
            dicom_candidates.append(f)
        else:
            inv.others.append(f)
    if masks_root is not None and masks_root != path and path not in masks_root.parents:
        inv.targets.extend(_drop_links(_walk(masks_root), inv))
    if dicom_candidates:
        from ulmed.io.dicom_scan import scan_dicom  # pydicom: loaded only when the input holds DICOM

        inv.dicom = scan_dicom(root, dicom_candidates, key_salt)
    inv.images = _drop_output_collisions(inv.images, inv.bad)
    for item in (*inv.nifti, *inv.images):
        item.target = find_target(item.path, root, masks_root)
    if inv.n_protectable == 0 and not inv.dicom.bad:
        raise InputError(
            "holds no DICOM series, NIfTI volume or image to protect "
            f"(looked for DICOM files, .nii/.nii.gz, {', '.join(IMAGE_SUFFIXES)})",
            path,
        )
    return inv
