def test_placeholder(asr_recipe_run):
    work, _ = asr_recipe_run
    print(work)
