package example.cds;

import cds.v1.OrderCheck.CheckRequest;
import cds.v1.OrderCheck.CheckResponse;
import cds.v1.OrderCheck.SubmitFeedbackRequest;
import cds.v1.OrderCheckServiceGrpc;
import cds.v1.OrderCheckServiceGrpc.OrderCheckServiceBlockingStub;
import io.grpc.CallCredentials;
import io.grpc.ChannelCredentials;
import io.grpc.ConnectivityState;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.TlsChannelCredentials;
import java.io.File;
import java.io.IOException;
import java.time.Duration;
import java.util.EnumSet;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Executor;
import java.util.concurrent.TimeUnit;
import java.util.logging.Level;
import java.util.logging.Logger;

/**
 * The part of an EMR that talks to cds: one channel for the application's lifetime, a deadline
 * on every call, and fail-open when the service cannot answer in time.
 *
 * <p>Copy this class. {@link #check} never blocks longer than the deadline and never throws for
 * an unavailable service: its {@link Outcome} says so, and the order goes ahead.
 */
public final class CdsClient implements AutoCloseable {
  private static final Logger LOG = Logger.getLogger(CdsClient.class.getName());

  /**
   * Statuses that mean "no answer now", not "a wrong request": the order proceeds without
   * decision support. RESOURCE_EXHAUSTED is the server shedding load (--max-concurrent-rpcs),
   * which an order screen must treat the same way.
   */
  private static final Set<Status.Code> FAIL_OPEN =
      EnumSet.of(
          Status.Code.UNAVAILABLE, Status.Code.DEADLINE_EXCEEDED, Status.Code.RESOURCE_EXHAUSTED);

  private final ManagedChannel channel;
  private final OrderCheckServiceBlockingStub stub;
  private final Duration deadline;

  /**
   * @param target {@code host:port} of the cds server
   * @param caFile PEM file of the CA that signed the server's certificate; null for plaintext
   *     (loopback only: the server takes plaintext elsewhere only when run with --insecure)
   * @param token bearer token for the {@code emr} role; null or empty for none
   * @param deadline how long one call may take, connection included
   */
  public CdsClient(String target, File caFile, String token, Duration deadline)
      throws IOException {
    ChannelCredentials credentials =
        caFile == null
            ? InsecureChannelCredentials.create()
            : TlsChannelCredentials.newBuilder().trustManager(caFile).build();
    this.channel = Grpc.newChannelBuilder(target, credentials).build();
    OrderCheckServiceBlockingStub stub = OrderCheckServiceGrpc.newBlockingStub(channel);
    this.stub = token == null || token.isEmpty() ? stub : stub.withCallCredentials(bearer(token));
    this.deadline = deadline;
  }

  /**
   * Starts connecting and waits at most {@code max} for the outcome: call it at start-up so
   * that the first order's deadline is not spent on TCP and TLS set-up. A server that is down
   * is no error here: calls then fail fast (and open) until it is back.
   */
  public ConnectivityState connect(Duration max) throws InterruptedException {
    long end = System.nanoTime() + max.toNanos();
    ConnectivityState state = channel.getState(true);
    while (state == ConnectivityState.IDLE || state == ConnectivityState.CONNECTING) {
      CountDownLatch changed = new CountDownLatch(1);
      channel.notifyWhenStateChanged(state, changed::countDown);
      long left = end - System.nanoTime();
      if (left <= 0 || !changed.await(left, TimeUnit.NANOSECONDS)) {
        break;
      }
      state = channel.getState(true);
    }
    return state;
  }

  /** The answer, or unavailable (fail-open). Other statuses are thrown: they are our bugs. */
  public Outcome check(CheckRequest request) {
    try {
      return Outcome.of(withDeadline().check(request));
    } catch (StatusRuntimeException e) {
      if (!FAIL_OPEN.contains(e.getStatus().getCode())) {
        throw e;
      }
      LOG.log(Level.WARNING, "cds Check failed open: {0}", describe(e.getStatus()));
      return Outcome.unavailable(e.getStatus());
    }
  }

  /**
   * Records the clinician's response. Returns false when the service could not take it now
   * (the order is not held up for it); other statuses are thrown.
   */
  public boolean submitFeedback(SubmitFeedbackRequest request) {
    try {
      withDeadline().submitFeedback(request);
      return true;
    } catch (StatusRuntimeException e) {
      if (!FAIL_OPEN.contains(e.getStatus().getCode())) {
        throw e;
      }
      LOG.log(Level.WARNING, "cds SubmitFeedback not recorded: {0}", describe(e.getStatus()));
      return false;
    }
  }

  /** Code and description: enough for the log, without the cause's stack trace. */
  private static String describe(Status status) {
    return status.getDescription() == null
        ? status.getCode().toString()
        : status.getCode() + ": " + status.getDescription();
  }

  /** A deadline is a point in time, so a fresh one for each call. */
  private OrderCheckServiceBlockingStub withDeadline() {
    return stub.withDeadlineAfter(deadline.toNanos(), TimeUnit.NANOSECONDS);
  }

  @Override
  public void close() throws InterruptedException {
    channel.shutdown().awaitTermination(1, TimeUnit.SECONDS);
  }

  /** {@code authorization: Bearer TOKEN} on every call, as the server's --auth-tokens expects. */
  private static CallCredentials bearer(String token) {
    Metadata.Key<String> authorization =
        Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);
    Metadata headers = new Metadata();
    headers.put(authorization, "Bearer " + token);
    return new CallCredentials() {
      @Override
      public void applyRequestMetadata(
          RequestInfo info, Executor executor, MetadataApplier applier) {
        applier.apply(headers);
      }

      // Abstract in grpc-java 1.41, gone in later versions: no @Override, so both compile.
      public void thisUsesUnstableApi() {}
    };
  }

  /** What {@link #check} returns: a response, or the status that made it fail open. */
  public static final class Outcome {
    private final CheckResponse response;
    private final Status status;

    private Outcome(CheckResponse response, Status status) {
      this.response = response;
      this.status = status;
    }

    static Outcome of(CheckResponse response) {
      return new Outcome(response, Status.OK);
    }

    static Outcome unavailable(Status status) {
      return new Outcome(null, status);
    }

    public boolean available() {
      return response != null;
    }

    /** Only when {@link #available()}. */
    public CheckResponse response() {
      return response;
    }

    /** Why there is no response (OK when there is one). */
    public Status status() {
      return status;
    }
  }
}
