"""Result stores: where the patient's recent results are kept for the rules to read.

``base`` is the interface every store implements (and all the engine needs); ``memory``
the in-process store, ``redis_store`` the shared one. Nothing is imported here, so a
caller that needs only the interface does not load the Redis client.
"""
