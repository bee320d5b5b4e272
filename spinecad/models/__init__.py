"""Models: the backbone registry, one backbone interface, the SpineCAD model and its Hub card, preprocessing."""
