"""Patient-space geometry: pixel -> patient (PixelSpacing row/column order), signed distances, nearest slices."""

from __future__ import annotations

import numpy as np
import pytest

from spinecad.study.geometry import GeometryError, Plane, nearest_slice, slab_mm

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def test_pixel_spacing_orders_rows_then_columns():
    # 0.5 mm between rows, 2 mm between columns: one column to the right is 2 mm along the row direction.
    plane = Plane.from_header((10.0, 20.0, 30.0), AXIAL, (0.5, 2.0), 100, 200)
    assert np.allclose(plane.to_patient(1, 0), (12.0, 20.0, 30.0))
    assert np.allclose(plane.to_patient(0, 1), (10.0, 20.5, 30.0))
    assert plane.to_pixel(plane.to_patient(7.0, 3.0)) == pytest.approx((7.0, 3.0))


def test_signed_distance_follows_the_normal_and_nearest_slice_prefers_the_field_of_view():
    planes = [Plane.from_header((-90.0, -90.0, z), AXIAL, (0.7, 0.7), 256, 256, 4.0) for z in (8.0, 4.0, 0.0, -4.0)]
    point = np.array([0.0, 0.0, 3.0])
    assert planes[1].signed_distance(point) == pytest.approx(-1.0)
    assert planes[2].signed_distance(point) == pytest.approx(3.0)
    nearest = nearest_slice(planes, point)
    assert (nearest.index, nearest.distance_mm, nearest.inside) == (1, pytest.approx(1.0), True)
    # A slice that is nearer but whose image does not hold the point loses to one that does.
    shifted = Plane.from_header((500.0, 500.0, 3.0), AXIAL, (0.7, 0.7), 256, 256)
    assert nearest_slice([shifted, planes[1]], point).index == 1
    assert nearest_slice([None, None], point) is None
    assert slab_mm(planes) == pytest.approx(4.0)


def test_sagittal_orientation_and_bad_headers():
    sagittal = Plane.from_header((0.0, -100.0, 150.0), SAGITTAL, (1.0, 1.0), 300, 300)
    assert sagittal.orientation == "sagittal"
    assert Plane.from_header((0, 0, 0), (1, 0, 0, 0, 0.6, 0.8), (1, 1), 10, 10).orientation == "oblique"
    for bad in [((0, 0), AXIAL, (1, 1)), ((0, 0, 0), (1, 0, 0, 1, 0, 0), (1, 1)), ((0, 0, 0), AXIAL, (0, 1)),
                ((0, 0, "x"), AXIAL, (1, 1)), ((0, 0, float("nan")), AXIAL, (1, 1))]:
        with pytest.raises(GeometryError):
            Plane.from_header(*bad, 10, 10)
