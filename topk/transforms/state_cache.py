"""What a stateful DoFn rebuilt from its runner state, kept between its
bundles in this process.

The stream's stateful stages (de-duplication, item shards, sketches) keep
the objects they rebuild from their state (sorted id runs, counts, slice
sketches) and write a new generation token with every change of the state:
a bundle that finds the token it wrote last skips reading the state back.

A runner may run one stage's bundles in several copies of its DoFn (the
Python SDK makes a bundle processor, with its own copy, for every bundle in
flight at once). A cache per copy then missed each time a key's next bundle
came to the other copy, and each miss read and rebuilt that key's whole
state: on Prism at 50,000 events/s a second copy of the item-shard stage
appeared after about two minutes, and from then on every firing rebuilt its
shard's counts. So the cache is per process, keyed by the stage (a token
made when the pipeline is built, the same in every copy) and the state key.
A stage processes a key one bundle at a time, so no entry is used by two
bundles at once; entries go when the stage's last copy is torn down.
"""
import threading
import uuid

_LOCK = threading.Lock()
#: (stage token, key) -> (generation, object)
_ENTRIES: dict = {}
#: stage token -> copies set up and not torn down
_COPIES: dict = {}


class StateCache:
    """A stage's view of the process-wide cache. Make it in the DoFn's
    ``__init__`` (its token travels with every pickled copy); call
    ``setup`` and ``teardown`` from the DoFn's."""

    def __init__(self):
        self._token = uuid.uuid4().hex

    def setup(self) -> None:
        with _LOCK:
            _COPIES[self._token] = _COPIES.get(self._token, 0) + 1

    def teardown(self) -> None:
        with _LOCK:
            left = _COPIES.get(self._token, 1) - 1
            if left > 0:
                _COPIES[self._token] = left
                return
            _COPIES.pop(self._token, None)
            for entry in [e for e in _ENTRIES if e[0] == self._token]:
                del _ENTRIES[entry]

    def get(self, key, generation):
        """The object put for ``key`` with this ``generation``, else
        ``None``."""
        entry = _ENTRIES.get((self._token, key))
        if entry is not None and entry[0] == generation:
            return entry[1]
        return None

    def put(self, key, generation, value) -> None:
        _ENTRIES[(self._token, key)] = (generation, value)
