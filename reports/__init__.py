"""What a person reads about a run, from its run folder alone.

The report (``report.md`` and ``plots/``), the model card (``model_card.json``,
``model_card.md`` and ``card/``), several runs compared, and a live run's
progress (``fedge status``). Everything here reads the files
:mod:`fedge.shared.run_folder` names; nothing writes a run's own record.
"""
