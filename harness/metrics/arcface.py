"""Identity similarity (ArcFace): faces in the image vs the reference images of the set's characters.

insightface ``FaceAnalysis`` (detection + recognition) from a local model pack ``<root>/models/<pack>/``
(buffalo_l: SCRFD detector + ResNet-50 ArcFace, 512-d, BGR input, ``normed_embedding``). The pack folder is
checked before insightface sees it: a missing pack would otherwise start a download.

Reference identity of a character = the mean of the normed embeddings of its reference images (renormalised),
or the max over them (``reference: max``). With several characters in a set, faces are assigned to
characters by the Hungarian algorithm on cosine similarity (not "the first face"). Rows per image:

- ``<lora id>`` per character: cosine (status ok), or missing with ``no_face`` when no face was assigned;
- ``face_detected``: 1 if every character got a face, else 0 (report the rate beside the mean);
- ``mean``: mean cosine over the characters that got a face (missing with ``no_face`` if none).

``detector: box`` skips detection and embeds the known character box (image metadata ``boxes`` or the
``boxes`` setting) with the pack's recognition model alone: the toy testbed's mode (its pack has no detector).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from PIL import Image

from harness.io import IMAGE_SUFFIXES
from harness.paths import resolve_path
from harness.metrics.backbones import load_face_analysis, load_face_recognizer
from harness.metrics.base import METRICS, Metric, ScoreRow
from harness.metrics.regions import known_boxes, square_box
from harness.store import ImageRecord

REFERENCE_SUFFIXES = IMAGE_SUFFIXES  # .bmp too: the images a LoRA trains on can be its references


def reference_files(lora: dict[str, Any]) -> list[Path]:
    """Image files in the LoRA's ``references`` folder (empty when there is none)."""
    folder = lora.get("references")
    if not folder or not resolve_path(folder).is_dir():
        return []
    return sorted(p for p in resolve_path(folder).iterdir() if p.suffix.lower() in REFERENCE_SUFFIXES)


def assign_faces(similarity: np.ndarray) -> dict[int, tuple[int, float]]:
    """Hungarian assignment on a (faces x characters) cosine matrix -> {character: (face, cosine)}."""
    from scipy.optimize import linear_sum_assignment

    if similarity.size == 0:
        return {}
    faces, characters = linear_sum_assignment(similarity, maximize=True)
    return {int(c): (int(f), float(similarity[f, c])) for f, c in zip(faces, characters)}


def to_bgr(image: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])


@METRICS.register("arcface")
class ArcFace(Metric):
    version = "1"

    def __init__(self, root: str = "metrics/toy/insightface", pack: str = "toy_face", detector: str = "insightface",
                 reference: str = "mean", boxes: dict[str, list[int]] | None = None, det_size: int = 640,
                 det_thresh: float = 0.5, providers: list[str] | None = None, batch_size: int = 16) -> None:
        if detector not in ("insightface", "box"):
            raise ValueError(f"arcface: detector={detector!r}; use 'insightface' (the pack's detector) or 'box' "
                             f"(known character boxes, recognition only)")
        if reference not in ("mean", "max"):
            raise ValueError(f"arcface: reference={reference!r}; use 'mean' or 'max' over the reference images")
        super().__init__(root=str(root), pack=pack, detector=detector, reference=reference, boxes=boxes,
                         det_size=int(det_size), det_thresh=float(det_thresh))
        self.providers = tuple(providers or ["CPUExecutionProvider"])  # where it runs, not what it computes
        self.batch_size = int(batch_size)
        self._app: Any = None
        self._recognizer: Any = None
        self._references: dict[str, np.ndarray | None] = {}

    def load(self) -> None:
        s = self.settings
        if s["detector"] == "insightface":
            self._app = load_face_analysis(s["root"], s["pack"], self.providers, s["det_size"], s["det_thresh"])
        else:
            self._recognizer = load_face_recognizer(s["root"], s["pack"], self.providers)

    # --- embeddings -----------------------------------------------------------------------------------------
    def face_embeddings(self, image: Image.Image, record: ImageRecord | None = None,
                        characters: list[dict[str, Any]] | None = None) -> list[np.ndarray]:
        """Normed embeddings of the faces in ``image`` (detected, or the known character boxes)."""
        if self._app is None and self._recognizer is None:
            self.load()
        if self._app is not None:
            return [face.normed_embedding for face in self._app.get(to_bgr(image))]
        boxes = known_boxes(record, self.settings)
        crops = []
        for lora in characters or [{"id": "character", "category": "character"}]:
            box = boxes.get(lora["id"]) or boxes.get(lora["category"])
            if box is None and record is None:  # a reference image without a known box shows the person
                box = [0, 0, image.width, image.height]
            if box is not None:
                crops.append(to_bgr(image.crop(square_box(box, image.width, image.height))))
        if not crops:
            return []
        features = self._recognizer.get_feat(crops)
        return [feature / np.linalg.norm(feature) for feature in features]

    def reference_embedding(self, lora: dict[str, Any]) -> np.ndarray | None:
        """(K, D) normed reference embeddings (K=1 for mean); None when no reference shows a face."""
        cache_key = f"{lora['id']}:{lora.get('references')}"
        if cache_key not in self._references:
            embeddings = []
            for path in reference_files(lora):
                faces = self.face_embeddings(Image.open(path).convert("RGB"), None, [lora])
                if faces:  # a reference with several faces: take the first (references show one person)
                    embeddings.append(faces[0])
            if not embeddings:
                self._references[cache_key] = None
            elif self.settings["reference"] == "mean":
                mean = np.mean(embeddings, axis=0)
                self._references[cache_key] = (mean / np.linalg.norm(mean))[None]
            else:
                self._references[cache_key] = np.stack(embeddings)
        return self._references[cache_key]

    # --- scoring --------------------------------------------------------------------------------------------
    def score(self, images: Iterable[ImageRecord]) -> Iterator[ScoreRow]:
        for image in images:
            yield from self.score_image(image, Image.open(image.path).convert("RGB"))

    def score_image(self, record: ImageRecord, image: Image.Image) -> Iterator[ScoreRow]:
        characters = [lora for lora in record.loras if lora["category"] == "character"]
        if not characters:
            return
        references = {lora["id"]: self.reference_embedding(lora) for lora in characters}
        usable = [lora for lora in characters if references[lora["id"]] is not None]
        for lora in characters:
            if references[lora["id"]] is None:
                yield self.row(record, None, lora["id"], "unavailable",
                               f"no reference image with a face for {lora['id']} in {lora.get('references')!r}: "
                               f"put face images in that folder (the testbed's reference_dir/<id>/)")
        faces = self.face_embeddings(image, record, usable)
        similarity = np.array([[float(np.max(references[lora["id"]] @ face)) for lora in usable] for face in faces])
        assigned = assign_faces(similarity.reshape(len(faces), len(usable)))
        values = []
        for index, lora in enumerate(usable):
            if index in assigned:
                values.append(assigned[index][1])
                yield self.row(record, assigned[index][1], lora["id"])
            else:
                yield self.row(record, None, lora["id"], "no_face",
                               f"{len(faces)} face(s) found for {len(usable)} character(s); none left for {lora['id']}")
        if usable:
            yield self.row(record, float(len(assigned) == len(usable)), "face_detected")
            if values:
                yield self.row(record, float(np.mean(values)), "mean")
            else:
                yield self.row(record, None, "mean", "no_face", "no face found in the image")
