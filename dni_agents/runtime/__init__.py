"""The runtime every driver shares: run folders and resume (:mod:`.run`), atomic checkpoints that refuse a
mismatch in one line (:mod:`.checkpoint`), runs on several processes (:mod:`.ranks`), bench reports
(:mod:`.report`) and clean stops on a signal (:mod:`.stop`). It sits between the core and the drivers:
it imports the core and the config, never a driver."""
