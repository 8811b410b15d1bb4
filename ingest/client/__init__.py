"""The reference player: a simulated population of listeners, driven by ``playledger simulate``.

Listeners (``population``) with networks that change over time (``network``) play
sessions in contexts (``sessions``, ``world``) on a compressed clock (``clock``). Each
play starts from a real CDN fetch or from a prefetch (``prefetch``, ``cdn_client``),
streams with adaptive bitrate (``abr``, ``playback``), and becomes an event in an
on-disk outbox (``outbox``) that a sender delivers at least once (``sender``).
``simulate`` runs it all and writes the ground truth (``truth``) and a summary
(``summary``); ``command`` is ``playledger simulate`` and ``bench`` is
``playledger bench simulate``.
"""
