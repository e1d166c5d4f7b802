"""Digests: one calm email a day or a week, at the subscriber's local hour, instead of an email per event.

* ``preferences``: frequency per subscription, time zone / hour / weekday per subscriber (parsing, validation,
  and the domain functions any sign-up flow or the manage page call).
* ``windows``: the time arithmetic (pure): when a window closes in a zone, across daylight-saving changes.
* ``held``: matched events held for the next digest (created by the matching statement, alerts.matching),
  the records net changes need, the shared fragments rendered once per event; dropping held items.
* ``schedule``: the beat tick: one grouped query finds who is due, set-based statements close their
  windows (one digest row per subscriber and window, unique in the database).
* ``assemble``: a digest's entries (net changes merged, most important first, grouped) and its email.
* ``send``: claim digests, assemble, hand them to the transport in as few requests as SendGrid allows.
"""
