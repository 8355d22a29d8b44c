"""`forge load`: an async streaming OpenAI-compatible load generator that accounts for every request.

Modules: ``arrivals`` (when requests are sent), ``traces`` (replaying recorded traffic), ``prompts`` (prompts of exact
token counts), ``client`` (one streamed request, timed and classified), ``runner`` (the schedule, bounded in count and
time), ``metrics`` (the summary and goodput), ``evidence`` (importing Forge's, vLLM's, GuideLLM's and AIPerf's results
as one readiness-evidence record), ``cli`` (`forge load ...`).
"""
