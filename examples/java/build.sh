#!/usr/bin/env bash
# Build and run the Java client example with Debian's packages only: no Maven, no download.
#
#   ./build.sh              generate stubs from protos/cds/v1 and compile everything
#   ./build.sh run [ARGS]   build if anything changed, then run example.cds.OrderScreenDemo
#   ./build.sh check        exit 1 naming what is missing, and the apt-get line that adds it
#   ./build.sh classpath    print the runtime classpath, for your own build
#
# BUILD_DIR (default examples/java/build) holds the generated sources, the classes and the
# TLS native library; JAVA_LIBS (default /usr/share/java) is where the jars are looked up.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
protos=$(cd "$here/../../protos" && pwd)
BUILD_DIR=${BUILD_DIR:-$here/build}
JAVA_LIBS=${JAVA_LIBS:-/usr/share/java}

# What grpc-java 1.41 needs at run time (the compile and runtime scopes of its POMs in
# /usr/share/maven-repo), by Debian package. The transport is Netty: Debian has no okhttp one.
jars=(
  grpc-api grpc-context grpc-core grpc-stub grpc-protobuf grpc-protobuf-lite grpc-netty
  protobuf      # libprotobuf-java
  guava         # libguava-java
  gson          # libgoogle-gson-java: grpc-core parses service configs with it
  perfmark-api  # libperfmark-java
  netty-buffer netty-codec netty-codec-http netty-codec-http2 netty-codec-socks netty-common
  netty-handler netty-handler-proxy netty-resolver netty-transport
  netty-tcnative  # libnetty-tcnative-java: TLS, see below
)
# Compile time only: @javax.annotation.Generated on the stubs (not in the JDK since 11).
compile_jars=(geronimo-annotation-1.3-spec)
packages="default-jdk-headless protobuf-compiler libprotobuf-dev protobuf-compiler-grpc-java-plugin"
packages+=" libgrpc-java libprotobuf-java libguava-java libgoogle-gson-java libperfmark-java"
packages+=" libnetty-java libnetty-tcnative-java libnetty-tcnative-jni"
packages+=" libgeronimo-annotation-1.3-spec-java"

plugin=$(command -v protoc-gen-grpc-java || command -v grpc_java_plugin || true)
well_known=${PROTO_INCLUDE:-/usr/include}  # google/protobuf/timestamp.proto (libprotobuf-dev)

# TLS: Debian's Netty is built without its JDK ALPN support, so gRPC over TLS needs OpenSSL
# through netty-tcnative. Netty loads it as libnetty_tcnative.so and the library checks its
# own file name, while Debian installs it as libnetty-tcnative.so: the build copies it.
tcnative=$(compgen -G "/usr/lib/*/jni/libnetty-tcnative.so" | head -n 1 || true)

classpath() {
  local cp="" jar
  for jar in "${jars[@]}" "$@"; do cp+="${cp:+:}$JAVA_LIBS/$jar.jar"; done
  echo "$cp"
}

missing() {
  local tool jar
  for tool in java javac protoc; do command -v "$tool" >/dev/null || echo "$tool"; done
  [[ -n "$plugin" ]] || echo "grpc_java_plugin"
  [[ -n "$tcnative" ]] || echo "/usr/lib/*/jni/libnetty-tcnative.so"
  [[ -f "$well_known/google/protobuf/timestamp.proto" ]] ||
    echo "$well_known/google/protobuf/timestamp.proto"
  for jar in "${jars[@]}" "${compile_jars[@]}"; do
    [[ -f "$JAVA_LIBS/$jar.jar" ]] || echo "$JAVA_LIBS/$jar.jar"
  done
}

check() {
  local gone
  gone=$(missing | paste -sd ' ' -)
  if [[ -n "$gone" ]]; then
    echo "missing: $gone" >&2
    echo "install: apt-get install --no-install-recommends $packages" >&2
    return 1
  fi
}

build() {
  check
  local stamp="$BUILD_DIR/.built"
  if [[ -f "$stamp" && -z "$(find "$protos/cds/v1" "$here/src" "$0" -newer "$stamp" | head -n 1)" ]]
  then
    return 0
  fi
  rm -rf "$BUILD_DIR/generated" "$BUILD_DIR/classes" "$BUILD_DIR/native"
  mkdir -p "$BUILD_DIR/generated" "$BUILD_DIR/classes" "$BUILD_DIR/native"
  protoc -I"$protos" -I"$well_known" --plugin=protoc-gen-grpc-java="$plugin" \
    --java_out="$BUILD_DIR/generated" --grpc-java_out="$BUILD_DIR/generated" \
    "$protos"/cds/v1/*.proto
  find "$BUILD_DIR/generated" "$here/src" -name '*.java' >"$BUILD_DIR/sources.txt"
  javac -nowarn -encoding UTF-8 --release 11 -d "$BUILD_DIR/classes" \
    -cp "$(classpath "${compile_jars[@]}")" @"$BUILD_DIR/sources.txt"
  cp "$tcnative" "$BUILD_DIR/native/libnetty_tcnative.so"
  touch "$stamp"
}

case "${1:-build}" in
  build) build ;;
  check) check ;;
  classpath) classpath ;;
  run)
    shift
    build
    # A short-lived client starts faster on the C1 compiler alone.
    # shellcheck disable=SC2086  # JAVA_OPTS is a list of options
    exec java ${JAVA_OPTS:--XX:TieredStopAtLevel=1} -Djava.library.path="$BUILD_DIR/native" \
      -cp "$BUILD_DIR/classes:$(classpath)" example.cds.OrderScreenDemo "$@"
    ;;
  *) sed -n '2,10p' "$0" >&2; exit 2 ;;
esac
