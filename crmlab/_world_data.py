"""Static vocabularies for the synthetic CRM world (names, places, products).

Kept apart from :mod:`crmlab.synth` so the generator reads as a process, not a list.
Frequencies are rough UK-like shapes: a few very common surnames, a long tail.
"""

FIRST_NAMES = (
    "Oliver George Harry Jack Jacob Noah Charlie Thomas Oscar William James Henry "
    "Leo Alfie Joshua Freddie Archie Ethan Isaac Alexander Joseph Edward Samuel Max "
    "Daniel Arthur Lucas Mohammed Logan Theo Harrison Benjamin Mason Sebastian Finley "
    "Adam Dylan Zachary Riley Teddy Michael Matthew Robert Richard David Christopher "
    "Anthony Andrew Stephen Peter Patrick Nicholas Timothy Jonathan Kenneth Ronald "
    "Frederick Edmund Albert Gerald Raymond Douglas Philip Terence Gregory Jose Rene "
    "Olivia Amelia Isla Ava Emily Isabella Mia Poppy Ella Lily Sophia Grace Evie "
    "Scarlett Ruby Chloe Sophie Freya Daisy Phoebe Alice Florence Charlotte Jessica "
    "Elizabeth Margaret Catherine Katherine Victoria Rebecca Deborah Susan Patricia "
    "Jennifer Barbara Dorothy Christine Abigail Samantha Alexandra Josephine Eleanor "
    "Jacqueline Valerie Penelope Rosemary Theresa Kimberly Beatrice Matilda Harriet "
    "Zoe Chloe Renee Noemie Ines Helene Andrea Francesca Gabriella Jemima Imogen "
    "Siobhan Niamh Aoife Ciaran Sean Declan Priya Aisha Fatima Amir Ravi Arjun Mei "
    "Hannah Sarah Laura Emma Lucy Rachel Nicola Claire Helen Karen Julie Joanne"
).split()

# first names that carry an accent in some records (the accent is dropped elsewhere)
ACCENTED = {"Zoe": "Zoë", "Renee": "Renée", "Jose": "José", "Rene": "René", "Noemie": "Noémie",
            "Ines": "Inès", "Helene": "Hélène"}

# diminutive -> given name; the standardiser maps them back
NICKNAMES = {
    "Bill": "William", "Will": "William", "Billy": "William", "Liam": "William",
    "Jim": "James", "Jimmy": "James", "Jamie": "James", "Harry": "Henry", "Hal": "Henry",
    "Bob": "Robert", "Rob": "Robert", "Bobby": "Robert", "Rick": "Richard", "Dick": "Richard",
    "Dave": "David", "Chris": "Christopher", "Kit": "Christopher", "Tony": "Anthony",
    "Andy": "Andrew", "Drew": "Andrew", "Steve": "Stephen", "Pete": "Peter", "Pat": "Patrick",
    "Nick": "Nicholas", "Tim": "Timothy", "Jon": "Jonathan", "Ken": "Kenneth", "Ron": "Ronald",
    "Fred": "Frederick", "Freddy": "Frederick", "Ed": "Edward", "Ted": "Edward", "Eddie": "Edward",
    "Bert": "Albert", "Gerry": "Gerald", "Ray": "Raymond", "Doug": "Douglas", "Phil": "Philip",
    "Terry": "Terence", "Greg": "Gregory", "Matt": "Matthew", "Mike": "Michael", "Mick": "Michael",
    "Sam": "Samuel", "Dan": "Daniel", "Danny": "Daniel", "Ben": "Benjamin", "Seb": "Sebastian",
    "Alex": "Alexander", "Zach": "Zachary", "Joe": "Joseph", "Josh": "Joshua", "Tom": "Thomas",
    "Tommy": "Thomas", "Charlie": "Charles", "Theo": "Theodore", "Max": "Maximilian",
    "Liz": "Elizabeth", "Beth": "Elizabeth", "Betty": "Elizabeth", "Lizzie": "Elizabeth",
    "Maggie": "Margaret", "Peggy": "Margaret", "Meg": "Margaret", "Kate": "Catherine",
    "Cathy": "Catherine", "Katie": "Katherine", "Kathy": "Katherine", "Vicky": "Victoria",
    "Becky": "Rebecca", "Becca": "Rebecca", "Debbie": "Deborah", "Sue": "Susan", "Susie": "Susan",
    "Patty": "Patricia", "Trish": "Patricia", "Jenny": "Jennifer", "Jen": "Jennifer",
    "Barb": "Barbara", "Dot": "Dorothy", "Dolly": "Dorothy", "Chrissie": "Christine",
    "Abby": "Abigail", "Sammy": "Samantha", "Sandra": "Alexandra", "Lexi": "Alexandra",
    "Josie": "Josephine", "Jo": "Joanne", "Ellie": "Eleanor", "Nell": "Eleanor",
    "Jackie": "Jacqueline", "Val": "Valerie", "Penny": "Penelope", "Rosie": "Rosemary",
    "Tess": "Theresa", "Kim": "Kimberly", "Bea": "Beatrice", "Tilly": "Matilda",
    "Hattie": "Harriet", "Frankie": "Francesca", "Gabby": "Gabriella", "Jem": "Jemima",
    "Nikki": "Nicola", "Liv": "Olivia", "Izzy": "Isabella", "Sophy": "Sophia", "Flo": "Florence",
    "Lottie": "Charlotte", "Jess": "Jessica", "Abi": "Abigail", "Mo": "Mohammed",
}

SURNAMES = (
    "Smith Jones Williams Taylor Brown Davies Evans Wilson Thomas Johnson Roberts Robinson "
    "Thompson Wright Walker White Edwards Hughes Green Hall Lewis Harris Clarke Patel Jackson "
    "Wood Turner Martin Cooper Hill Ward Morris Moore Clark Lee King Baker Harrison Morgan "
    "Allen James Scott Phillips Watson Davis Parker Price Bennett Young Griffiths Mitchell "
    "Kelly Cook Carter Richardson Bailey Collins Bell Shaw Murphy Miller Cox Richards Khan "
    "Marshall Anderson Simpson Ellis Adams Singh Begum Wilkinson Foster Chapman Powell Webb "
    "Rogers Gray Mason Ali Hunt Hussain Campbell Matthews Owen Palmer Holmes Mills Barnes "
    "Knight Lloyd Butler Russell Barker Fisher Stevens Jenkins Murray Dixon Harvey Graham "
    "Pearson Ahmed Fletcher Walsh Kaur Gibson Howard Andrews Stewart Elliott Reynolds "
    "Saunders Payne Fox Ford Pearce Day Brooks West Lawrence Cole Atkinson Bradley Spencer "
    "Gill Dawson Ball Burton O'Brien Watts Rose Booth Perry Ryan Grant Wells Armstrong "
    "Francis Rees Hayes Hart Hudson Newman Barrett Webster Hunter Gregory Carr Lowe Page "
    "Marsh Riley Dunn Woods Parsons Berry Stone Reid Holland Hawkins Harding Porter Robertson "
    "Newton Oliver Reed Kennedy Williamson Bird Gardner Shah Dean Lane Cooke Bates Henderson "
    "Parry Burgess Bishop Walton Burns Nicholson Shepherd Ross Cross Long Freeman Warren "
    "Nicholls Hamilton Byrne Sutton McDonald Yates Hodgson Robson Curtis Hopkins O'Connor "
    "Harper Coleman Watkins Moss McCarthy Chambers O'Neill Griffin Sharp Hardy Wheeler Potter "
    "Osborne Johnston Gordon Doyle Wallace George Jordan Hutchinson Rowe Burke May Pritchard "
    "Gilbert Willis Higgins Read Miles Stevenson Stephenson Hammond Arnold Buckley Walters "
    "Hewitt Barber Nelson Slater Austin Sullivan Whitehead Mann Frost Lambert Stephens Blake "
    "Akhtar Lynch Goodwin Barton Woodward Thomson Cunningham Quinn Barnett Baxter Bibi Clayton "
    "Nash Greenwood Jennings Holt Kemp Poole Gallagher Bond Stokes Tucker Davidson Fowler "
    "Heath Norman Middleton Lawson Banks French Stanley Jarvis Gibbs Ferguson Hayward Carroll "
    "Douglas Dickinson Todd Barlow Peters Lucas Knowles Hartley Miah Simmons Morton Alexander "
    "Field Morrison Norris Townsend Preston Hancock Thornton Baldwin Burrows Briggs Storey "
    "Pike Francis Dobson Nolan Sanders Kirby Zhang Nowak Kowalski Fernandes Costa Novak"
).split()

STREETS = (
    "High Church Station Victoria Park Main London Green Manor Queens Kings Mill New Grange "
    "School Albert Alexandra York Windsor Chester Springfield Highfield Richmond Orchard "
    "Meadow Willow Beech Oak Elm Cedar Ash Hawthorn Rowan Chestnut Maple Birch Holly Juniper "
    "Forest Riverside Bridge Castle Abbey Priory Cross Market Broad Long West East North South"
).split()
STREET_TYPES = ["Street", "Road", "Lane", "Avenue", "Close", "Drive", "Way", "Gardens", "Crescent", "Place"]
STREET_ABBREV = {"Street": "St", "Road": "Rd", "Lane": "Ln", "Avenue": "Ave", "Close": "Cl",
                 "Drive": "Dr", "Way": "Way", "Gardens": "Gdns", "Crescent": "Cres", "Place": "Pl"}

# town, postcode area, number of districts (population weight)
TOWNS = [
    ("London", "E", 20, 9.0), ("London", "N", 20, 8.0), ("London", "SW", 20, 8.0), ("Leeds", "LS", 28, 4.0),
    ("Manchester", "M", 40, 5.0), ("Birmingham", "B", 70, 5.0), ("Bristol", "BS", 40, 3.0),
    ("Sheffield", "S", 36, 3.0), ("Liverpool", "L", 38, 3.0), ("Newcastle", "NE", 40, 2.5),
    ("Nottingham", "NG", 25, 2.5), ("Leicester", "LE", 19, 2.0), ("Cardiff", "CF", 24, 2.0),
    ("Edinburgh", "EH", 55, 2.5), ("Glasgow", "G", 84, 3.0), ("Brighton", "BN", 27, 1.5),
    ("Oxford", "OX", 29, 1.2), ("Cambridge", "CB", 25, 1.2), ("York", "YO", 62, 1.2),
    ("Norwich", "NR", 35, 1.0), ("Exeter", "EX", 39, 1.0), ("Plymouth", "PL", 35, 1.0),
    ("Southampton", "SO", 53, 1.5), ("Reading", "RG", 45, 1.5), ("Coventry", "CV", 47, 1.2),
    ("Bath", "BA", 22, 0.6), ("Derby", "DE", 75, 1.0), ("Hull", "HU", 20, 1.0),
    ("Swansea", "SA", 73, 0.8), ("Aberdeen", "AB", 56, 0.8), ("Belfast", "BT", 94, 1.2),
]

EMAIL_DOMAINS = ["gmail.com", "outlook.com", "hotmail.co.uk", "yahoo.co.uk", "btinternet.com",
                 "icloud.com", "sky.com", "live.co.uk", "aol.com", "protonmail.com"]

# department -> category -> base items; every base item gets a standard and a premium variant.
# Categories whose name is in SENSITIVE_CATEGORIES are flagged sensitive in the product table.
TAXONOMY = {
    "Fresh Food": {
        "Fruit": ["Bananas", "Apples", "Strawberries", "Grapes"],
        "Vegetables": ["Potatoes", "Carrots", "Salad Leaves", "Tomatoes"],
        "Bakery": ["Sliced Bread", "Burger Buns", "Croissants", "Wraps"],
        "Meat": ["Beef Burgers", "Chicken Breast", "Sausages", "Bacon"],
    },
    "Dairy & Eggs": {
        "Milk": ["Whole Milk", "Semi-Skimmed Milk", "Oat Drink", "Skimmed Milk"],
        "Cheese": ["Cheddar", "Mozzarella", "Brie", "Parmesan"],
        "Yogurt": ["Greek Yogurt", "Fruit Yogurt", "Natural Yogurt", "Kids Yogurt"],
        "Eggs & Butter": ["Free Range Eggs", "Butter", "Spread", "Cream"],
    },
    "Food Cupboard": {
        "Pasta & Rice": ["Spaghetti", "Penne", "Basmati Rice", "Noodles"],
        "Sauces": ["Tomato Pasta Sauce", "Pesto", "Ketchup", "Curry Sauce"],
        "Snacks": ["Tortilla Chips", "Salsa Dip", "Crisps", "Popcorn"],
        "Breakfast": ["Cornflakes", "Porridge Oats", "Granola", "Jam"],
    },
    "Drinks": {
        "Hot Drinks": ["Ground Coffee", "Tea Bags", "Hot Chocolate", "Coffee Pods"],
        "Soft Drinks": ["Cola", "Orange Juice", "Sparkling Water", "Lemonade"],
        "Beer & Cider": ["Lager", "Ale", "Cider", "Alcohol-Free Beer"],
        "Wine": ["Red Wine", "White Wine", "Rose Wine", "Prosecco"],
    },
    "Baby": {
        "Nappies": ["Nappies Size 3", "Nappies Size 4", "Baby Wipes", "Nappy Bags"],
        "Baby Food": ["Baby Porridge", "Fruit Puree", "Infant Formula", "Baby Snacks"],
        "Baby Care": ["Baby Shampoo", "Baby Lotion", "Teething Gel", "Baby Bottles"],
        "Nursery": ["Baby Monitor", "Cot Sheets", "Baby Blanket", "Night Light"],
    },
    "Health & Beauty": {
        "Hair Care": ["Shampoo", "Conditioner", "Hair Dye", "Hair Gel"],
        "Skin Care": ["Moisturiser", "Sun Cream", "Face Wash", "Lip Balm"],
        "Medicines": ["Paracetamol", "Ibuprofen", "Cold Remedy", "Plasters"],
        "Dental": ["Toothpaste", "Toothbrush", "Mouthwash", "Dental Floss"],
    },
    "Household": {
        "Cleaning": ["Washing Up Liquid", "Surface Spray", "Bleach", "Sponges"],
        "Laundry": ["Laundry Liquid", "Fabric Conditioner", "Stain Remover", "Laundry Pods"],
        "Paper": ["Toilet Roll", "Kitchen Roll", "Tissues", "Bin Bags"],
        "Pet Care": ["Dog Food", "Dog Treats", "Cat Food", "Cat Litter"],
    },
    "Home": {
        "Bedding": ["Duvet Quilt", "Pillows", "Bed Sheets", "Mattress Topper"],
        "Kitchenware": ["Frying Pan", "Knife Set", "Mugs", "Storage Boxes"],
        "Decor": ["Candles", "Photo Frame", "Cushions", "Vase"],
        "Bathroom": ["Bath Towels", "Bath Mat", "Shower Curtain", "Soap Dispenser"],
    },
    "Clothing": {
        "Womenswear": ["Jeans", "Dress", "Jumper", "Coat"],
        "Menswear": ["Shirt", "Chinos", "Hoodie", "Jacket"],
        "Kidswear": ["School Shirt", "School Trousers", "Pyjamas", "Wellies"],
        "Intimate Apparel": ["Push-up Bra", "Lingerie Set", "Briefs", "Shapewear"],
    },
    "Electronics": {
        "Computing": ["Printer", "Ink Cartridge", "Laptop", "Mouse"],
        "Phones": ["Phone Case", "Charger Cable", "Screen Protector", "Earbuds"],
        "TV & Audio": ["Television", "HDMI Cable", "Soundbar", "Bluetooth Speaker"],
        "Batteries": ["AA Batteries", "AAA Batteries", "Light Bulbs", "Extension Lead"],
    },
    "Garden & Outdoor": {
        "Garden": ["Compost", "Plant Feed", "Seeds", "Garden Gloves"],
        "Camping": ["Tent", "Sleeping Bag", "Camping Stove", "Torch"],
        "BBQ": ["Charcoal", "BBQ Tools", "Firelighters", "Skewers"],
        "Outdoor Living": ["Parasol", "Garden Chair", "Solar Lights", "Plant Pots"],
    },
    "Leisure": {
        "Toys": ["Building Bricks", "Doll", "Board Game", "Jigsaw"],
        "Books": ["Novel", "Cookbook", "Children's Book", "Puzzle Book"],
        "Stationery": ["Notebook", "Pens", "Greeting Card", "Gift Wrap"],
        "Sexual Health": ["Condoms", "Lubricant", "Pregnancy Test", "Personal Massager"],
    },
}
SENSITIVE_CATEGORIES = ("Intimate Apparel", "Sexual Health")

# typical list price of a base item by department (standard variant; premium costs ~1.8x)
DEPT_PRICE = {"Fresh Food": 2.5, "Dairy & Eggs": 2.0, "Food Cupboard": 2.2, "Drinks": 4.5, "Baby": 8.0,
              "Health & Beauty": 5.0, "Household": 4.0, "Home": 18.0, "Clothing": 22.0,
              "Electronics": 35.0, "Garden & Outdoor": 15.0, "Leisure": 9.0}

# planted affinities: antecedent base item(s) -> consequent base item, P(consequent added | antecedent)
AFFINITIES = [
    (("Spaghetti",), "Tomato Pasta Sauce", 0.55, "complement"),
    (("Tortilla Chips",), "Salsa Dip", 0.6, "complement"),
    (("Printer",), "Ink Cartridge", 0.7, "complement"),
    (("Tent",), "Sleeping Bag", 0.6, "bundle"),
    (("Dog Food",), "Dog Treats", 0.5, "complement"),
    (("Nappies Size 3",), "Baby Wipes", 0.6, "complement"),
    (("Charcoal",), "Firelighters", 0.6, "bundle"),
    (("Beef Burgers",), "Burger Buns", 0.5, "bundle"),
    (("Beef Burgers", "Burger Buns"), "Ketchup", 0.7, "bundle"),
    (("Duvet Quilt",), "Push-up Bra", 0.35, "sensitive"),
]
