"""Connectivity of a structure as a spectrum, and radius refinement (Kreiman & Krishnapriyan, 2025).

The radius graph at radius ``r``: an edge from atom ``i`` to every atom (or periodic image of one)
closer than ``r``, keeping only the ``max_neighbors`` nearest per atom (ties at the cut broken by
neighbour index, then image). An edge survives when either end keeps it, so the graph stays
undirected. Periodic images are found with ``ase.neighborlist`` and folded onto the cell: ``A[i, j]``
counts the images of ``j`` linked to ``i`` (an atom's own images land on the diagonal), which for a
non-periodic structure is exactly the plain radius graph. Every atom also gets one self loop.

The spectrum is the sorted (ascending) eigenvalues of ``L = I - D^-1/2 A D^-1/2`` (``D`` the
degrees, self loops included), all in [0, 2]. Spectra of different lengths are compared after
zero-padding the shorter at the end, as the reference implementation pads.

A spectrum has one entry per atom of the cell, so a supercell of the same crystal is a different
point: compare structures whose cells are built alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from ase import Atoms

MAX_NEIGHBORS = 50  # the reference's radius_graph(max_num_neighbors=50), applied as the nearest 50
RADII = np.linspace(3.0, 9.0, 10)  # the reference's radius refinement grid, Å


def adjacency(atoms: Atoms, radius: float, max_neighbors: int = MAX_NEIGHBORS) -> np.ndarray:
    """The (n, n) adjacency of the periodic radius graph, self loops included (see module doc)."""
    from ase.neighborlist import neighbor_list

    n = len(atoms)
    i, j, d, shift = neighbor_list("ijdS", atoms, float(radius))
    keep = np.zeros(len(i), dtype=bool)
    # Rank each atom's neighbours by distance; i is already grouped by neighbor_list, but lexsort
    # on (image, j, d, i) makes the order (and the tie-break at the cut) explicit.
    order = np.lexsort((shift[:, 2], shift[:, 1], shift[:, 0], j, d, i))
    starts = np.searchsorted(i[order], np.arange(n))
    rank = np.arange(len(order)) - starts[i[order]]
    keep[order[rank < max_neighbors]] = True
    # Undirected: edge (i -> j, S) pairs with (j -> i, -S); keep both when either end kept it.
    if len(i):
        base = 2 * int(np.abs(shift).max()) + 1

        def code(a, b, s):
            s = s + base // 2
            return ((a * n + b) * base + s[:, 0]) * base ** 2 + s[:, 1] * base + s[:, 2]

        forward = code(i, j, shift)
        by_code = np.argsort(forward)
        reverse = by_code[np.searchsorted(forward[by_code], code(j, i, -shift))]
        keep = keep | keep[reverse]
    a = np.zeros((n, n))
    np.add.at(a, (i[keep], j[keep]), 1.0)
    a[np.diag_indices(n)] += 1.0
    return a


def laplacian_spectrum(atoms: Atoms, radius: float, max_neighbors: int = MAX_NEIGHBORS) -> np.ndarray:
    """Sorted eigenvalues of the symmetric-normalized Laplacian of the radius graph."""
    a = adjacency(atoms, radius, max_neighbors)
    inv_sqrt = 1.0 / np.sqrt(a.sum(axis=1))  # every degree >= 1 (the self loop)
    lap = np.eye(len(a)) - inv_sqrt[:, None] * a * inv_sqrt[None, :]
    return np.sort(np.linalg.eigvalsh(lap))


def pad(spectrum: np.ndarray, length: int) -> np.ndarray:
    """Zero-pad a spectrum at the end to ``length`` (never truncates)."""
    spectrum = np.asarray(spectrum, dtype=float)
    if len(spectrum) > length:
        raise ValueError(f"spectrum of length {len(spectrum)} cannot be padded to {length}")
    return np.concatenate([spectrum, np.zeros(length - len(spectrum))])


def mean_spectrum(spectra: Iterable[np.ndarray]) -> np.ndarray:
    """Elementwise mean of zero-padded spectra (padded to the longest)."""
    spectra = [np.asarray(s, dtype=float) for s in spectra]
    if not spectra:
        raise ValueError("mean_spectrum needs at least one spectrum")
    length = max(len(s) for s in spectra)
    return np.mean([pad(s, length) for s in spectra], axis=0)


def spectral_distance(spectrum: np.ndarray, reference: np.ndarray) -> float:
    """Squared Euclidean distance between two spectra, the shorter zero-padded."""
    length = max(len(spectrum), len(reference))
    diff = pad(spectrum, length) - pad(reference, length)
    return float(diff @ diff)


def radius_distances(atoms: Atoms, mean: np.ndarray, radii: Sequence[float] = RADII,
                     max_neighbors: int = MAX_NEIGHBORS) -> np.ndarray:
    """Distance of the structure's spectrum at each radius from the mean training spectrum."""
    return np.array([spectral_distance(laplacian_spectrum(atoms, r, max_neighbors), mean) for r in radii])


def refine_radius(atoms: Atoms, mean: np.ndarray, radii: Sequence[float] = RADII,
                  max_neighbors: int = MAX_NEIGHBORS) -> float:
    """Radius refinement without labels: the radius whose graph spectrum lies closest to the mean
    training spectrum (the first one on a tie)."""
    radii = np.asarray(radii, dtype=float)
    return float(radii[int(np.argmin(radius_distances(atoms, mean, radii, max_neighbors)))])
