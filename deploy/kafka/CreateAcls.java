// Creates the project's SCRAM users and ACLs in one JVM through Kafka's own Admin API (kafka-clients, from
// the Maven artifacts in deploy/kafka/lib): one run instead of one kafka-configs or kafka-acls invocation
// per user, principal and operation.
//
//   java -cp 'deploy/kafka/lib/*' deploy/kafka/CreateAcls.java ADMIN_CLIENT_PROPERTIES < lines
//
// Each line of standard input is a user, `USER NAME PASSWORD` (SCRAM-SHA-512, 8192 iterations), or an
// allow rule, `PRINCIPAL RESOURCE_TYPE PATTERN_TYPE NAME OPERATION`, for example
// `User:order-intake TOPIC LITERAL orders.events WRITE`. Passwords come on standard input, never as
// arguments (which any local user can list).
import java.io.BufferedReader;
import java.io.FileReader;
import java.io.InputStreamReader;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.ScramCredentialInfo;
import org.apache.kafka.clients.admin.ScramMechanism;
import org.apache.kafka.clients.admin.UserScramCredentialAlteration;
import org.apache.kafka.clients.admin.UserScramCredentialUpsertion;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class CreateAcls {
    public static void main(String[] args) throws Exception {
        Properties config = new Properties();
        try (FileReader reader = new FileReader(args[0])) {
            config.load(reader);
        }
        List<AclBinding> bindings = new ArrayList<>();
        List<UserScramCredentialAlteration> users = new ArrayList<>();
        BufferedReader input = new BufferedReader(new InputStreamReader(System.in));
        for (String line = input.readLine(); line != null; line = input.readLine()) {
            String[] part = line.trim().split("\\s+");
            if (part.length == 3 && part[0].equals("USER")) {
                users.add(new UserScramCredentialUpsertion(
                    part[1], new ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), part[2]));
                continue;
            }
            if (part.length != 5) {
                throw new IllegalArgumentException("not a USER or an ACL line: " + part[0] + " ...");
            }
            bindings.add(new AclBinding(
                new ResourcePattern(ResourceType.valueOf(part[1]), part[3], PatternType.valueOf(part[2])),
                new AccessControlEntry(part[0], "*", AclOperation.valueOf(part[4]), AclPermissionType.ALLOW)));
        }
        try (Admin admin = Admin.create(config)) {
            if (!users.isEmpty()) {
                admin.alterUserScramCredentials(users).all().get();
            }
            admin.createAcls(bindings).all().get();
        }
        System.out.println("created " + users.size() + " users and " + bindings.size() + " ACL bindings");
    }
}
