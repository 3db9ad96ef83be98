# The agent image for people with Docker and a registry: the netlet binary,
# the netlet-cni plugin (copied onto the node by the chart's init container)
# and the packages image/contents lists (nft, which the agent runs; ip, ss,
# bridge and ping for people debugging a node). image/build.sh builds the
# same image offline from the same list, without Docker.
#   docker build -t netlet .
#   kind: kind load docker-image netlet && e2e/cluster.sh --install netlet
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# netlet-cni runs on the node, not in the image: linked statically, so that
# the node's C library does not matter (image/build.sh builds it the same way).
RUN cargo build --release --locked --bin netlet \
 && cargo rustc --release --locked -p netlet-cni --bin netlet-cni -- -C target-feature=+crt-static

FROM debian:bookworm-slim
COPY image/contents /tmp/image-contents
RUN apt-get update \
 && apt-get install -y --no-install-recommends $(sed -e 's/#.*//' /tmp/image-contents | awk 'NF {print $1}') \
 && rm -rf /var/lib/apt/lists/* /tmp/image-contents
COPY --from=build /src/target/release/netlet /usr/local/bin/netlet
COPY --from=build /src/target/release/netlet-cni /usr/local/bin/netlet-cni
ENTRYPOINT ["/usr/local/bin/netlet"]
CMD ["run"]
