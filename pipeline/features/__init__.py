"""Feature extraction, usable without the stages: what ``images``, ``item_features`` and
``user_profiles`` call.

- :mod:`pipeline.features.encoders`: text (MiniLM, Hub encoders, the CLIP text tower), open_clip
  images, vision-language captions, LLM profile writers;
- :mod:`pipeline.features.prompts`: the versioned prompt files of ``prompts/``;
- :mod:`pipeline.features.image_fetch`, :mod:`pipeline.features.image_store`: item images
  fetched, checked and kept in Parquet shards;
- :mod:`pipeline.features.item_text`, :mod:`pipeline.features.item_store`,
  :mod:`pipeline.features.items`: the item feature store, its inputs and its encode loop;
- :mod:`pipeline.features.profiles`, :mod:`pipeline.features.profile_store`: LLM user profiles
  and their store.
"""
