"""One round of a run, one class per kind of round (as Flower keeps one strategy per file).

:class:`~mmfl.server.rounds.pipeline.RoundPipeline` runs a round: the server's own epoch
(``method.server_data``), the kind's site work, then evaluation. The kind comes from the
method's registry fields (:func:`~mmfl.server.rounds.pipeline.round_kind`):

==============================  ==========================================================
:mod:`.represent`               representation exchange (``cream``, ``cream+``, ``mean``,
                                ``public-teachers``) and ``local``
:mod:`.regress`                 representation regression (``regress``, ``regress-public``),
                                groups included
:mod:`.weights`                 weight averaging (the FedAvg family)
:mod:`.site_free`               the ``site-free`` control
==============================  ==========================================================
"""

from mmfl.server.rounds.pipeline import RoundPipeline
from mmfl.server.rounds.timing import timed

__all__ = ["RoundPipeline", "timed"]
