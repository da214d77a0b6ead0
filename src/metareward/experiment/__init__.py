"""The verifiable-instruction experiment (docs/experiment.md): does a run through this code make a model better?

Three arms from the same seed model on the same train prompts (``settings.ARMS``): the oracle-judge control
(the verifier scores the actor's responses), Self-Rewarding and Meta-Rewarding (the model judges itself);
each iteration's model is measured on held-out prompts whose constraints code checks (``heldout``), and
the whole is driven by ``driver.Experiment`` (``metareward experiment CONFIG``).
"""
