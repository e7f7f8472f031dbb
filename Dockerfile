FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY fhir_server ./fhir_server
COPY profiles ./profiles
COPY mappings ./mappings
COPY terminologies ./terminologies
# editable: the server reads profiles/, mappings/ and terminologies/ next to the package
RUN pip install --no-cache-dir -e . && useradd --create-home fhir && mkdir -p /app/.data && chown fhir /app/.data
USER fhir
ENV FHIR_SERVER_HOST=0.0.0.0 FHIR_SERVER_PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=5 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/fhir/metadata').status == 200 else 1)"
CMD ["fhir-server", "serve"]
