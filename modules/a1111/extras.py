"""A1111's `modules.extras`: PNG info reading; merging is the Models tab's (modules/models/merge.py)."""
from __future__ import annotations

import html

from modules.a1111.unsupported import unsupported


def run_pnginfo(image):
    """(html of the info items, the infotext, html) as A1111's PNG Info shows them."""
    from modules.a1111.images_names import read_info_from_image

    if image is None:
        return "", "", ""
    geninfo, items = read_info_from_image(image)
    items = {**({"parameters": geninfo} if geninfo else {}), **items}
    info = "".join(f"<div><p><b>{html.escape(str(k))}</b></p><p>{html.escape(str(v))}</p></div>"
                   for k, v in items.items())
    return "", geninfo or "", info or "<div><p>Nothing found in the image.</p></div>"


run_modelmerger = unsupported("extras.run_modelmerger", "use the Models tab's merger or modules.models.merge")
