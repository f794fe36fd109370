"""The download phase: get Stanford Cars and pack it into data/raw. Routes and sources (:mod:`.sources`,
:mod:`.routes`, :mod:`.fetch`), the layouts and annotation files a copy comes in (:mod:`.layouts`, :mod:`.archives`,
:mod:`.matfiles`), its fingerprint, the generated set, a user's extra classes, the packing (:mod:`.manifest`) and
the stage itself (:mod:`.acquire`). The format of data/raw belongs to :mod:`carbench.data.raw`, which the split and
crop stages read; they import nothing of this package."""
