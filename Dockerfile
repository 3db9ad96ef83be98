# The agent image for people with Docker and a registry: the netlet binary
# plus the packages image/contents lists (nft, which the agent runs; ip, ss,
# bridge and ping for people debugging a node). image/build.sh builds the
# same image offline from the same list, without Docker.
#   docker build -t netlet .
#   kind: kind load docker-image netlet && e2e/cluster.sh --install netlet
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin netlet

FROM debian:bookworm-slim
COPY image/contents /tmp/image-contents
RUN apt-get update \
 && apt-get install -y --no-install-recommends $(sed -e 's/#.*//' /tmp/image-contents | awk 'NF {print $1}') \
 && rm -rf /var/lib/apt/lists/* /tmp/image-contents
COPY --from=build /src/target/release/netlet /usr/local/bin/netlet
ENTRYPOINT ["/usr/local/bin/netlet"]
CMD ["run"]
