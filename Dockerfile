FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
# Every compose service runs from this image: workers (with their metrics endpoint), the
# projector, and the API (`stepstone serve`), so it installs the api and metrics extras.
RUN pip install --no-cache-dir '.[api,metrics]'
ENTRYPOINT []
CMD ["stepstone", "--help"]
