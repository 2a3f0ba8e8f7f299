package example.cds;

import cds.v1.OrderCheck.CheckRequest;
import cds.v1.OrderCheck.CheckResponse;
import cds.v1.OrderCheck.SubmitFeedbackRequest;
import cds.v1.Types.Decision;
import cds.v1.Types.EncounterType;
import cds.v1.Types.FeedbackOutcome;
import cds.v1.Types.ItemCategory;
import cds.v1.Types.ItemDecision;
import cds.v1.Types.OrderItem;
import cds.v1.Types.OverrideOption;
import cds.v1.Types.Patient;
import cds.v1.Types.PriorResult;
import cds.v1.Types.Reason;
import com.google.protobuf.Timestamp;
import io.grpc.StatusRuntimeException;
import java.io.File;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.time.Instant;
import java.util.Optional;
import java.util.UUID;

/**
 * What an order screen does with cds: check a lab order, show each line's decision and
 * reasons, send the clinician's response to a warning, and go ahead without cds when it
 * cannot answer in time.
 *
 * <p>Configuration, from the environment: CDS_SERVER (host:port, default 127.0.0.1:50051, or
 * the first argument), CDS_TOKEN (bearer token), CDS_TLS_CA (CA file: TLS), CDS_DEADLINE_MS
 * (default 300). Exit status: 0 when the order may proceed (with or without cds), 1 when cds
 * refused the call for another reason (a bug or a configuration fault to fix), 2 for bad usage.
 */
public final class OrderScreenDemo {
  private static final PrintStream OUT =
      new PrintStream(new FileOutputStream(FileDescriptor.out), true, StandardCharsets.UTF_8);

  public static void main(String[] args) throws Exception {
    String target = args.length > 0 ? args[0] : env("CDS_SERVER", "127.0.0.1:50051");
    String ca = env("CDS_TLS_CA", "");
    Duration deadline;
    try {
      deadline = Duration.ofMillis(Long.parseLong(env("CDS_DEADLINE_MS", "300")));
    } catch (NumberFormatException e) {
      System.err.println("CDS_DEADLINE_MS: not a number of milliseconds");
      System.exit(2);
      return;
    }
    try (CdsClient cds =
        new CdsClient(target, ca.isEmpty() ? null : new File(ca), env("CDS_TOKEN", ""), deadline)) {
      cds.connect(Duration.ofSeconds(2)); // at start-up, not on the order path
      System.exit(placeOrder(cds));
    }
  }

  /** Returns the exit status. */
  static int placeOrder(CdsClient cds) {
    CheckRequest request = labOrder();
    try {
      long start = System.nanoTime();
      CdsClient.Outcome outcome = cds.check(request);
      if (!outcome.available()) {
        OUT.printf(
            "CDS unavailable (%s after %d ms): order proceeds without decision support%n",
            outcome.status().getCode(), (System.nanoTime() - start) / 1_000_000);
        return 0;
      }
      CheckResponse response = outcome.response();
      OUT.printf("CDS answered in %d ms%n", (System.nanoTime() - start) / 1_000_000);
      show(response);
      firstWarning(response).ifPresent(line -> respond(cds, response, line));
      return 0;
    } catch (StatusRuntimeException e) {
      OUT.printf("CDS error %s: %s%n", e.getStatus().getCode(), e.getStatus().getDescription());
      return 1;
    }
  }

  /** The order of examples/check-lab.json: potassium, HbA1c and sodium for a diabetic. */
  static CheckRequest labOrder() {
    return CheckRequest.newBuilder()
        .setRequestId(UUID.randomUUID().toString())
        .setInstitutionId("FJ-SL")
        .setDepartmentId("内分泌科")
        .setClinicianId("DEMO-DR-01")
        .setEncounterType(EncounterType.ENCOUNTER_TYPE_OUTPATIENT)
        .setPatient(Patient.newBuilder().setPatientId("DEMO-0001").addDiagnosisCodes("E11.9"))
        .addItems(lab("1", "2823-3"))
        .addItems(lab("2", "4548-4"))
        .addItems(lab("3", "2951-2"))
        .build();
  }

  private static OrderItem lab(String lineId, String itemCode) {
    return OrderItem.newBuilder()
        .setLineId(lineId)
        .setItemCode(itemCode)
        .setCategory(ItemCategory.ITEM_CATEGORY_LAB)
        .build();
  }

  /** Program against codes; show messages and displays to the clinician as they come. */
  static void show(CheckResponse response) {
    OUT.printf(
        "order %s (decision %s, catalogue %s)%n",
        name(response.getDecision()), response.getDecisionId(), response.getCatalogVersion());
    if (response.getDegradedCount() > 0) {
      OUT.printf("  degraded: %s%n", String.join(", ", response.getDegradedList()));
    }
    for (ItemDecision line : response.getItemsList()) {
      OUT.printf(
          "line %s %s: %s%n", line.getLineId(), line.getItemCode(), name(line.getDecision()));
      for (Reason reason : line.getReasonsList()) {
        OUT.printf(
            "  %s %s: %s%n", name(reason.getDecision()), reason.getCode(), reason.getMessage());
        for (PriorResult prior : reason.getPriorResultsList()) {
          OUT.printf(
              "    prior result %s from %s, reported %s, valid until %s%n",
              prior.getResultId(),
              prior.getInstitutionId(),
              instant(prior.getReportedAt()),
              instant(prior.getValidUntil()));
        }
        for (OverrideOption option : reason.getOverrideOptionsList()) {
          OUT.printf(
              "    override %s: %s%s%n",
              option.getCode(),
              option.getDisplay(),
              option.getRequiresComment() ? " (comment required)" : "");
        }
      }
    }
  }

  private static Optional<ItemDecision> firstWarning(CheckResponse response) {
    return response.getItemsList().stream()
        .filter(line -> line.getDecision() == Decision.DECISION_WARN)
        .findFirst();
  }

  /**
   * The clinician's answer to a warning; here, the first offered override reason that needs
   * no comment, or "accepted" (the repeat test is dropped) when none is offered.
   */
  private static void respond(CdsClient cds, CheckResponse response, ItemDecision line) {
    Optional<OverrideOption> reason =
        line.getReasonsList().stream()
            .flatMap(r -> r.getOverrideOptionsList().stream())
            .filter(o -> !o.getRequiresComment())
            .findFirst();
    SubmitFeedbackRequest.Builder feedback =
        SubmitFeedbackRequest.newBuilder()
            .setDecisionId(response.getDecisionId())
            .setLineId(line.getLineId())
            .setClinicianId("DEMO-DR-01");
    if (reason.isPresent()) {
      feedback.setOutcome(FeedbackOutcome.FEEDBACK_OUTCOME_OVERRIDDEN);
      feedback.setOverrideCode(reason.get().getCode());
    } else {
      feedback.setOutcome(FeedbackOutcome.FEEDBACK_OUTCOME_ACCEPTED);
    }
    String what = reason.map(o -> "OVERRIDDEN " + o.getCode()).orElse("ACCEPTED");
    if (cds.submitFeedback(feedback.build())) {
      OUT.printf("feedback line %s %s: acknowledged%n", line.getLineId(), what);
    } else {
      OUT.printf("feedback line %s %s: not recorded, CDS unavailable%n", line.getLineId(), what);
    }
  }

  private static String name(Decision decision) {
    return decision.name().replaceFirst("^DECISION_", "");
  }

  private static Instant instant(Timestamp t) {
    return Instant.ofEpochSecond(t.getSeconds(), t.getNanos());
  }

  private static String env(String name, String fallback) {
    String value = System.getenv(name);
    return value == null || value.isEmpty() ? fallback : value;
  }

  private OrderScreenDemo() {}
}
