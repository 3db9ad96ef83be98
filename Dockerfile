# The agent image: the netlet binary, plus nft and ip (nft is run by the
# agent; ip is for people debugging a node). Build: docker build -t netlet .
# kind: kind load docker-image netlet && e2e/cluster.sh --install netlet
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin netlet

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables iproute2 iputils-ping ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/netlet /usr/local/bin/netlet
ENTRYPOINT ["/usr/local/bin/netlet"]
CMD ["run"]
