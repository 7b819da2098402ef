"""The composition root: configs become trainings in run folders. ``experiment`` turns one resolved
arm into model, optimizer, loop and sinks in its folder (`lambexp run`); ``reproduce`` plans the
distinct trainings of several configs and seeds, shares identical ones and continues unfinished ones
(`reproduce`, `resume`); ``jobs`` runs them in worker processes (`--jobs N`)."""
