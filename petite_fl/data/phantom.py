"""A brain FDG-PET activity phantom, evaluated on any scanner's voxel grid.

Hand-written because no maintained package makes 3D FDG brain phantoms with anatomical
variation (BrainWeb-style phantoms must be downloaded). Structures are defined in
millimetres in the subject's own frame, so one anatomy can be imaged by any scanner.
Uptake is relative to grey matter (= 1): FDG's GM/WM contrast is about 3-4 : 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import map_coordinates
from scipy.spatial.transform import Rotation

#: Head ellipsoid semi-axes (mm) of an average subject, RAS frame: x left-right,
#: y posterior-anterior, z inferior-superior. The brain is the head minus 12 mm of
#: scalp (4 mm), skull (6 mm) and cerebrospinal fluid (2 mm).
HEAD_SEMI_AXES = (78.0, 97.0, 74.0)
SCALP_MM, SKULL_MM, CSF_MM = 4.0, 6.0, 2.0
BRAIN_DEPTH_MM = SCALP_MM + SKULL_MM + CSF_MM

# (centre mm, semi-axes mm, uptake) of deep structures, one entry per hemisphere where
# paired; x is mirrored for the other side.
CAUDATE = ((13.0, 12.0, 14.0), (5.0, 10.0, 7.0), 1.0)
PUTAMEN = ((24.0, 3.0, 2.0), (5.5, 13.0, 9.0), 1.05)
THALAMUS = ((10.0, -12.0, 4.0), (8.0, 11.0, 8.0), 0.95)
VENTRICLE = ((9.0, 3.0, 16.0), (6.0, 24.0, 7.0), 0.04)
CEREBELLUM = ((0.0, -56.0, -36.0), (48.0, 26.0, 20.0), 0.85)
BRAINSTEM = ((0.0, -22.0, -38.0), (11.0, 12.0, 26.0), 0.5)

#: Regions that AD-like hypometabolism affects first: posterior cingulate, parietal
#: and temporal cortex (Minoshima et al., Ann Neurol 1997).
HYPO_REGIONS = ((0.0, -40.0, 25.0), (38.0, -48.0, 30.0), (50.0, -12.0, -14.0))
#: Labels of the region map saved with the ground truth: the grey matter of the AD-relevant
#: regions (spheres of this radius around `HYPO_REGIONS`, the middle of the lesions' 14-24 mm,
#: in every subject) and the reference region a reader divides by (cerebellum).
REGION_AD, REGION_REFERENCE = 1, 2
REGION_RADIUS_MM = 20.0

FIELD_SPACING_MM = 3.0  # grid of the smooth random fields that fold the cortex
FIELD_EXTENT_MM = 240.0


@dataclass(frozen=True)
class Anatomy:
    """One subject: pose, size and uptake variation, cortical folding, lesions."""

    scale: tuple[float, float, float]
    rotation_deg: tuple[float, float, float]  # pitch (x), roll (y), yaw (z)
    shift_mm: tuple[float, float, float]
    ventricle_scale: float
    cortex_mm: float  # mean cortical thickness
    wm_uptake: float
    global_uptake: float
    folding: np.ndarray  # smooth field on the FIELD grid, ~N(0, 1)
    texture: np.ndarray  # second field: uptake heterogeneity
    hypo: tuple[tuple[tuple[float, float, float], float, float], ...]  # centre, radius, depth


def sample_anatomy(rng: np.random.Generator, hypometabolism: float = 0.3) -> Anatomy:
    """Draw a subject from a population with realistic spread in size, pose and uptake."""
    n = int(FIELD_EXTENT_MM / FIELD_SPACING_MM) + 1
    atrophy = rng.uniform(0.0, 1.0)
    hypo: list[tuple[tuple[float, float, float], float, float]] = []
    if rng.uniform() < hypometabolism:
        for cx, cy, cz in HYPO_REGIONS:
            if rng.uniform() < 0.7:
                depth = float(rng.uniform(0.15, 0.35))
                radius = float(rng.uniform(14.0, 24.0))
                for sign in ((1.0,) if cx == 0 else (1.0, -1.0)):
                    hypo.append(((sign * cx, cy, cz), radius, depth * rng.uniform(0.8, 1.0)))
    return Anatomy(
        scale=tuple(np.clip(rng.normal(1.0, 0.05, 3), 0.88, 1.12).tolist()),
        rotation_deg=(rng.uniform(-10, 10), rng.uniform(-4, 4), rng.uniform(-4, 4)),
        shift_mm=tuple(rng.uniform([-5, -8, -8], [5, 8, 8]).tolist()),
        ventricle_scale=1.0 + 0.8 * atrophy,
        cortex_mm=float(5.0 - 1.2 * atrophy),
        wm_uptake=float(rng.uniform(0.25, 0.33)),
        global_uptake=float(np.clip(rng.normal(1.0, 0.1), 0.75, 1.25)),
        folding=_smooth_field(rng, n, 1.6),
        texture=_smooth_field(rng, n, 4.0),
        hypo=tuple(hypo),
    )


def _smooth_field(rng: np.random.Generator, n: int, sigma_cells: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal((n, n, n)), sigma_cells, mode="wrap")
    return ((field - field.mean()) / field.std()).astype(np.float32)


def _subject_coords(anatomy: Anatomy, shape: tuple[int, int, int], affine: np.ndarray):
    """World coordinates of every voxel centre, mapped into the subject's frame (mm)."""
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    world = _apply3(affine[:3, :3], idx) + affine[:3, 3:4].astype(np.float32)
    rot = Rotation.from_euler("xyz", anatomy.rotation_deg, degrees=True).as_matrix()
    local = _apply3(rot.T, world - np.asarray(anatomy.shift_mm, np.float32)[:, None])
    local /= np.asarray(anatomy.scale, np.float32)[:, None]
    return local


def _apply3(m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A 3×3 matrix times 3×N points, without BLAS.

    Hand-written on purpose: OpenBLAS can spin forever when first called from a thread of a
    process that has forked (seen in Flower's simulation process, where the ServerApp runs
    in a thread); three multiply-adds per row need no BLAS.
    """
    m = np.asarray(m, np.float32)
    return np.stack([m[i, 0] * v[0] + m[i, 1] * v[1] + m[i, 2] * v[2] for i in range(3)])


def _ellipsoid_depth(u: np.ndarray, centre, semi) -> np.ndarray:
    """Approximate signed distance (mm) inside an ellipsoid: one Newton step on q = 1."""
    c = np.asarray(centre, np.float32)[:, None]
    a = np.asarray(semi, np.float32)[:, None]
    d = (u - c) / a
    q = np.einsum("ij,ij->j", d, d)
    grad = 2.0 * np.sqrt(np.einsum("ij,ij->j", d / a, d / a)) + 1e-6
    return (1.0 - q) / grad


def _inside(depth: np.ndarray, edge_mm: float) -> np.ndarray:
    """Soft occupancy (partial volume) of the region depth > 0 over one voxel width."""
    return np.clip(0.5 + depth / edge_mm, 0.0, 1.0)


def _sample_field(field: np.ndarray, u: np.ndarray) -> np.ndarray:
    grid = (u + FIELD_EXTENT_MM / 2.0) / FIELD_SPACING_MM
    return map_coordinates(field, grid, order=1, mode="nearest").astype(np.float32)


def render_activity(
    anatomy: Anatomy, shape: tuple[int, int, int], affine: np.ndarray
) -> np.ndarray:
    """Activity (grey matter = 1) at every voxel of a grid given by shape and RAS affine."""
    return render(anatomy, shape, affine)[0]


def render(anatomy: Anatomy, shape: tuple[int, int, int], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Activity (grey matter = 1) and region labels (uint8: `REGION_AD`, `REGION_REFERENCE`, 0) on a grid.

    A voxel is labelled when more than half of it is the region's tissue (partial volume).
    """
    edge = float(np.mean(np.linalg.norm(affine[:3, :3], axis=0)))
    u = _subject_coords(anatomy, shape, affine)
    head = _ellipsoid_depth(u, (0.0, 0.0, 0.0), HEAD_SEMI_AXES)
    act = np.zeros(head.shape, np.float32)

    act += 0.25 * (_inside(head, edge) - _inside(head - SCALP_MM, edge))
    act += 0.06 * (_inside(head - SCALP_MM, edge) - _inside(head - SCALP_MM - SKULL_MM, edge))
    act += 0.03 * (_inside(head - SCALP_MM - SKULL_MM, edge) - _inside(head - BRAIN_DEPTH_MM, edge))

    brain_w = _inside(head - BRAIN_DEPTH_MM, edge)
    sel = np.flatnonzero(brain_w > 0)
    ub, depth = u[:, sel], head[sel] - BRAIN_DEPTH_MM
    uptake, cortex, cerebellum = _brain_uptake(anatomy, ub, depth, edge)
    act[sel] += brain_w[sel] * uptake
    labels = np.zeros(head.shape, np.uint8)
    inside = brain_w[sel] >= 0.5
    ad = np.zeros(sel.size, bool)
    for cx, cy, cz in HYPO_REGIONS:
        for sign in ((1.0,) if cx == 0 else (1.0, -1.0)):
            ad |= _ellipsoid_depth(ub, (sign * cx, cy, cz), (REGION_RADIUS_MM,) * 3) > 0
    labels[sel[inside & ad & (cortex >= 0.5)]] = REGION_AD
    labels[sel[inside & (cerebellum >= 0.5)]] = REGION_REFERENCE
    return (act * anatomy.global_uptake).reshape(shape), labels.reshape(shape)


def _brain_uptake(anatomy: Anatomy, u: np.ndarray, depth: np.ndarray,
                  edge: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Uptake inside the brain (folded cortex, white matter, deep nuclei, cerebellum), and the
    share of each voxel that is cortical grey matter and cerebellum after every structure is placed."""
    fold = _sample_field(anatomy.folding, u)
    texture = 1.0 + 0.06 * _sample_field(anatomy.texture, u)
    # Cortex: thickness varies with the folding field; sulci dip grey matter inwards.
    thickness = anatomy.cortex_mm * (1.0 + 0.2 * fold) + 14.0 * np.clip(fold - 0.2, 0.0, None)
    gm = _inside(thickness - depth, edge)
    # Interhemispheric fissure (CSF) lined by medial cortex, above the corpus callosum.
    upper = _inside(u[2] - 8.0, edge) * _inside(40.0 - depth, edge)
    medial = upper * _inside(5.5 - np.abs(u[0]), edge)
    fissure = upper * _inside(1.2 - np.abs(u[0]), edge)
    gm = np.maximum(gm, medial)
    uptake = anatomy.wm_uptake + (1.0 - anatomy.wm_uptake) * gm
    for centre, radius, drop in anatomy.hypo:
        lesion = _inside(_ellipsoid_depth(u, centre, (radius, radius, radius)), 8.0)
        uptake = uptake * (1.0 - drop * lesion * gm)
    uptake = uptake * (1.0 - fissure) + 0.03 * fissure
    cortex = gm * (1.0 - fissure)

    vs = anatomy.ventricle_scale
    for (cx, cy, cz), semi, value in (CAUDATE, PUTAMEN, THALAMUS, VENTRICLE):
        grow = (vs, 1.0 + 0.3 * (vs - 1.0), vs) if value < 0.1 else (1.0, 1.0, 1.0)
        axes = tuple(s * g for s, g in zip(semi, grow, strict=True))
        for sign in (1.0, -1.0):
            occ = _inside(_ellipsoid_depth(u, (sign * cx, cy, cz), axes), edge)
            uptake = uptake * (1.0 - occ) + value * occ
            cortex = cortex * (1.0 - occ)
    for centre, semi, value in (BRAINSTEM, CEREBELLUM):
        occ = _inside(_ellipsoid_depth(u, centre, semi), edge)
        local = value * (1.0 + 0.12 * fold) if value > 0.8 else value
        uptake = uptake * (1.0 - occ) + local * occ
        cortex = cortex * (1.0 - occ)
    return uptake * texture, cortex, occ  # occ: the cerebellum's, placed last
