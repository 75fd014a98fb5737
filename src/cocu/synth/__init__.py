"""The synthetic semantic-gap world: image-text data whose captions miss concepts, with complete truth.

``cocu.synth.concepts`` is the concept inventory (light to import); ``cocu.synth.world`` generates a world
(``WorldConfig``, ``generate_world``, ``render_sample``); ``cocu synth OUT`` is its command line.
"""
